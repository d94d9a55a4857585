// Include first in every CPU kernel file: compiled with -mavx2 (CMake's default on x86-64), ATen's
// Vectorized<T> then uses AVX2 lanes and Sleef's 1-ulp exp; without it, plain-width lanes.
#pragma once
#if defined(__AVX2__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
