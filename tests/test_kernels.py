"""Kernel time by kind (vlsdk.inspect.kernels): the categories, and a real profile on the CPU."""

from __future__ import annotations

import pytest
import torch

from vlsdk.inspect.kernels import kernel_breakdown, kind_of

# kernel names as an H200 profile of the base encoder printed them (benchmarks/throughput.py --profile)
H200_KERNELS = [
    ("_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9xINS_4gemm6kernel13GemmUniversalINS5_17Gr",
     "grouped gemm"),
    ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN", "gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0",
     "attention"),
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_256x64_32x4_nhwc_align8>",
     "conv"),
    ("void at::native::batch_norm_transform_input_channels_last_kernel<c10::BFloat16, float>", "norm/pool"),
    ("void at_cuda_detail::cub::detail::radix_sort::DeviceRadixSortOnesweepKernel<", "sort/topk"),
    ("triton_poi_fused_gelu_view_2", "triton fused"),
    ("void at::native::vectorized_gather_kernel<16, long>(char*, char*, long*, int)", "copy/elementwise"),
    ("void cudnn::cnn::conv2d_grouped_direct_kernel<false, true, false, true, false, false, 0, 0, int, float>",
     "conv"),  # a depthwise convolution, not a grouped GEMM
    ("triton_poi_fused__grouped_mm_gelu_20", "grouped gemm"),
    ("Memset (Device)", "other"),
]


@pytest.mark.parametrize("name,kind", H200_KERNELS)
def test_kernel_kinds(name, kind):
    assert kind_of(name) == kind


def test_cpu_breakdown_sums_its_kinds_and_ranks_the_slowest_first():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    report = kernel_breakdown(lambda: torch.relu(a @ b).sum(), iters=3, top=5, device="cpu")
    assert report.total_ms > 0
    assert report.total_ms == pytest.approx(sum(report.by_kind.values()))
    assert "gemm" in report.by_kind
    assert list(report.by_kind.values()) == sorted(report.by_kind.values(), reverse=True)
    assert [ms for _, ms in report.top] == sorted((ms for _, ms in report.top), reverse=True)
    assert 0 < len(report.top) <= 5
    assert "kernel time per call" in str(report)
