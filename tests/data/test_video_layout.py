import numpy as np
import pytest
import torch

from rlvr_world.data.video_layout import IGNORE_INDEX, MultiStepLayout, SingleStepLayout


def test_paper_sizes():
    single = SingleStepLayout()                       # 4 x 320 codes of FSQ [7,5,5,5,5], 13 action dims, 256 bins
    assert (single.vocab_size, single.bos_id, single.eos_id, single.action_offset) == (4633, 4631, 4632, 4375)
    assert (single.prompt_len, single.response_len) == (1333, 321)
    assert SingleStepLayout(eos=False).response_len == 320
    multi = MultiStepLayout()
    assert (multi.vocab_size, multi.context_offset, multi.action_offset) == (9008, 4375, 8750)
    assert multi.response_len == 7 * (80 + 13)


def single_example():
    lay = SingleStepLayout(tokens_per_frame=3, context_frames=2, action_dims=2, codebook_size=10, action_bins=4)
    frames = torch.tensor([[[0, 1, 2], [3, 4, 5], [6, 7, 8]],
                           [[9, 9, 9], [0, 0, 0], [1, 2, 3]]])             # [B=2, n+1=3, F=3]
    actions = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [0, 0]]])         # [B=2, n=2, A=2]
    return lay, frames, actions


def test_single_step_hand_example():
    lay, frames, actions = single_example()
    out = lay.build(frames, actions)
    bos, eos = 14, 15
    assert lay.vocab_size == 16
    assert out.input_ids.tolist()[0] == [0, 1, 2, 10, 11, 3, 4, 5, 12, 13, bos, 6, 7, 8, eos]
    assert out.input_ids.tolist()[1] == [9, 9, 9, 13, 13, 0, 0, 0, 10, 10, bos, 1, 2, 3, eos]
    assert (out.prompt_len, out.response_len) == (11, 4)
    assert out.input_ids.dtype == torch.int64 and out.input_ids.shape == (2, 15)
    assert (out.labels[:, :11] == IGNORE_INDEX).all()
    assert torch.equal(out.labels[:, 11:], out.input_ids[:, 11:])
    assert out.response_mask.shape == (2, 4) and out.response_mask.all()
    prompt, response = lay.split(out.input_ids)
    assert torch.equal(torch.cat([prompt, response], 1), out.input_ids)
    assert torch.equal(prompt, lay.build_prompt(frames[:, :2], actions))
    codes, valid = lay.response_frames(response)
    assert torch.equal(codes, frames[:, 2:]) and valid.all()
    bad = response.clone()
    bad[1, 0] = 12                                                         # an action id where a code belongs
    assert lay.response_frames(bad)[1].tolist() == [True, False]
    # numpy input (ActionTokenizer.encode returns numpy)
    assert torch.equal(lay.build(frames.numpy(), actions.numpy()).input_ids, out.input_ids)


def test_single_step_without_eos():
    lay, frames, actions = single_example()
    lay = SingleStepLayout(3, 2, 2, 10, 4, eos=False)
    out = lay.build(frames, actions)
    assert out.input_ids.shape == (2, 14) and out.input_ids[0, -1].item() == 8


def test_multi_step_hand_example():
    lay = MultiStepLayout(tokens_per_frame=2, context_tokens_per_frame=3, context_frames=1, future_frames=2,
                          action_dims=1, codebook_size=5, context_codebook_size=6, action_bins=3)
    # ids: dynamics [0, 5), context [5, 11), actions [11, 14), BOS 14, EOS 15
    assert (lay.vocab_size, lay.bos_id) == (16, 14)
    ctx = torch.tensor([[[0, 5, 2]]])                                     # [B=1, n=1, Fc=3]
    future = torch.tensor([[[1, 2], [3, 4]]])                            # [B=1, S=2, F=2]
    actions = torch.tensor([[[0], [1], [2]]])                            # [B=1, n+S=3, A=1]
    out = lay.build(future, actions, context_tokens=ctx)
    assert out.input_ids.tolist() == [[5, 10, 7, 11, 14, 1, 2, 12, 3, 4, 13]]
    assert (out.prompt_len, out.response_len) == (5, 6)
    assert out.labels.tolist() == [[-100] * 5 + [1, 2, -100, 3, 4, -100]]
    assert out.response_mask.tolist() == [[True, True, False, True, True, False]]
    forced_tokens, forced_mask = lay.forced(actions)
    assert forced_mask.tolist() == [False, False, True, False, False, True]
    prompt, response = lay.split(out.input_ids)
    assert torch.equal(response[:, forced_mask], forced_tokens[:, forced_mask])
    assert torch.equal(prompt, lay.build_prompt(ctx, actions))
    codes, valid = lay.response_frames(response)
    assert torch.equal(codes, future) and valid.all()


def test_paper_multi_step_positions():
    lay = MultiStepLayout(context_frames=2)
    b = 2
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, 4375, (b, 2, 320), generator=gen)
    fut = torch.randint(0, 4375, (b, 7, 80), generator=gen)
    act = torch.randint(0, 256, (b, 9, 13), generator=gen)
    out = lay.build(fut, act, context_tokens=ctx)
    assert out.input_ids.shape == (b, 2 * 333 + 1 + 651) and out.input_ids.max() < 9008
    p = out.prompt_len
    assert (out.input_ids[:, p - 1] == lay.bos_id).all()
    assert ((out.input_ids[:, :320] >= 4375) & (out.input_ids[:, :320] < 8750)).all()   # context codebook
    assert out.response_mask.sum().item() == b * 7 * 80
    assert torch.equal(out.input_ids[:, p + 80: p + 93], act[:, 2] + 8750)


def test_bad_inputs():
    lay, frames, actions = single_example()
    with pytest.raises(ValueError, match=r"frame_tokens must have shape \[B, 3, 3\], got \(2, 2, 3\)"):
        lay.build(frames[:, :2], actions)
    with pytest.raises(ValueError, match=r"action_bins must lie in \[0, 4\).*e.g. 4"):
        lay.build(frames, actions + 1)
    with pytest.raises(ValueError, match=r"frame_tokens must lie in \[0, 10\)"):
        lay.build(frames + 5, actions)
    with pytest.raises(ValueError, match="frame_tokens must be an integer tensor"):
        lay.build(frames.float(), actions)
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, 15\]"):
        lay.split(torch.zeros(2, 14, dtype=torch.int64))
    with pytest.raises(ValueError, match="tokens_per_frame must be an int >= 1"):
        SingleStepLayout(tokens_per_frame=0)
    multi = MultiStepLayout(2, 3, 1, 2, 1, 5, 6, 3)
    with pytest.raises(ValueError, match=r"action_bins must have shape \[B, 3, 1\]"):
        multi.forced(np.zeros((1, 2, 1), np.int64))


def test_doctests():
    import doctest

    from rlvr_world.data import episodes, video_layout

    for module in (episodes, video_layout):
        assert doctest.testmod(module, extraglobs={"torch": torch, "np": np}).failed == 0
