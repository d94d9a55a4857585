"""Training recipes and their shared parts.

Recipes (one module each, run by ``rlvr-train <recipe>``): ``tokenizer`` (the FSQ frame tokenizer).
Shared: ``checkpoint`` (atomic, resumable checkpoints), ``logging`` (JSONL metrics, tqdm, TensorBoard).
Nothing is imported here, so ``import rlvr_world.train`` stays cheap.
"""
