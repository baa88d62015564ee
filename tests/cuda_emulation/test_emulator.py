"""The CUDA emulator's own tests: it runs correct kernels right and fails on the classic bugs.

Each bug lives in a tiny kernel of broken_kernels.cu next to its correct twin (one flag apart): a missing
__syncthreads, a shared-memory access out of bounds, a data race, a divergent barrier, __trap, misused
wmma, a wrong mma.m16n8k16 fragment index, a missing or too weak cp.async.wait_group, and launches a GPU
refuses. The fiber build finds the missing barrier deterministically (the thread
that reads first sees the NaN prefill); AddressSanitizer finds the out-of-bounds access; ThreadSanitizer
finds the race and the missing barrier as a race. Skipped only where there is no C++ compiler.
"""
import numpy as np
import pytest
import torch

from cuda_emulation import harness

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no C++ compiler (g++) for the CUDA emulator")
BROKEN = harness.ROOT / "tests" / "cuda_emulation" / "broken_kernels.cu"


@pytest.fixture(scope="module")
def emu():
    return harness.Emulator(sources=[BROKEN])


def _rotate(emu, n, barrier):
    x = torch.arange(n, dtype=torch.float32) + 1
    out = torch.full((n,), float("nan"))
    emu.call("rotate", [x, out], [n, barrier])
    return x, out


@pytest.mark.parametrize("schedule", [0, 1, 7])
def test_a_barrier_makes_shared_memory_visible(emu, schedule):
    emu.schedule = schedule
    x, out = _rotate(emu, 64, barrier=1)
    assert torch.equal(out, torch.roll(x, -1))


def test_a_missing_barrier_reads_the_nan_prefill(emu):
    emu.schedule = 0  # the highest thread runs first and reads thread 0's element before thread 0 wrote it
    _, out = _rotate(emu, 64, barrier=0)
    assert torch.isnan(out[63]) and not torch.isnan(out[:63]).any()


def test_a_shared_memory_write_out_of_bounds_fails_the_launch(emu):
    x, out = torch.ones(32), torch.zeros(32)
    emu.call("shifted", [x, out], [32, 0, 0])  # in bounds: fine
    assert torch.equal(out, x)
    with pytest.raises(harness.EmulatedCudaError, match="past the end of shared memory"):
        emu.call("shifted", [x, out], [32, 1, 0])


def test_a_divergent_barrier_is_named(emu):
    message = r"exited without reaching the __syncthreads at .*broken_kernels.cu:\d+"
    with pytest.raises(harness.EmulatedCudaError, match=message):
        emu.call("divergent", [torch.zeros(64)])


def test_trap_fails_the_launch(emu):
    with pytest.raises(harness.EmulatedCudaError, match=r"thread \(3,0,0\): the kernel executed __trap"):
        emu.call("trap", [torch.zeros(32)])


def test_warp_collectives_against_numpy(emu):
    x = torch.tensor(np.random.default_rng(0).standard_normal(64), dtype=torch.float32)
    out = torch.full((64, 8), float("nan"))
    emu.call("warp", [x, out], [64])
    xs = x.double().numpy().reshape(2, 32)
    for w in range(2):
        o, v = out[32 * w:32 * w + 32].double().numpy(), xs[w]
        np.testing.assert_allclose(o[:, 0], v.sum(), rtol=1e-5)
        np.testing.assert_array_equal(o[:, 1], np.append(v[1:], v[-1]))  # down: the last lane keeps its own
        np.testing.assert_array_equal(o[:, 2], np.insert(v[:-1], 0, v[0]))  # up: lane 0 keeps its own
        np.testing.assert_array_equal(o[:, 3], np.full(32, v[5]))
        ballot = sum(1 << i for i in range(32) if v[i] > 0)
        assert (o[:, 4] == ballot & 0xFFFF).all() and (o[:, 5] == ballot >> 16).all()
        # warp 0 has a value below -2 and none above 1.5; warp 1 the opposite
        assert (o[:, 6] == float((v > -2).all())).all() and (o[:, 7] == float((v > 1.5).any())).all()


def test_half_and_bfloat16_rounding_matches_torch(emu):
    specials = [0.0, -0.0, 65504.0, 65520.0, 1e-8, 6e-8, 3e-5, -1e-7, float("inf"), 1.0 + 2 ** -11,
                1.0 + 3 * 2 ** -11, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 3.0e38]
    x = torch.cat([torch.tensor(specials), torch.randn(200) * 10 ** torch.randint(-8, 6, (200,)).float()])
    half, bf16 = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    emu.call("convert", [x, half, bf16], [x.numel()])
    assert torch.equal(half, x.half().float())
    assert torch.equal(bf16, x.bfloat16().float())
    nan = torch.tensor([float("nan")] * 4)
    emu.call("convert", [nan, half[:4].contiguous(), bf16[:4].contiguous()], [4])


@pytest.mark.parametrize("b_col", [0, 1])
def test_wmma_product_against_float64(emu, b_col):
    rng = np.random.default_rng(1)
    a, b = (torch.tensor(rng.standard_normal((16, 16)), dtype=torch.float16) for _ in range(2))
    c = torch.full((16, 16), float("nan"))
    emu.call("wmma", [a, b, c], [b_col, 0, 16, 0, 0])
    b_mat = b.double().T if b_col else b.double()
    np.testing.assert_allclose(c.double().numpy(), (a.double() @ b_mat).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset, ldm, message", [(16, 16, "32-byte"), (0, 12, "multiple of 16 bytes")])
def test_wmma_refuses_misaligned_pointers_and_bad_ldm(emu, offset, ldm, message):
    a = b = torch.zeros(16, 16, dtype=torch.float16)
    with pytest.raises(harness.EmulatedCudaError, match=message):
        emu.call("wmma", [a, b, torch.zeros(16, 16)], [0, offset, ldm, 0, 0])


def test_wmma_footprint_past_shared_memory_fails(emu):
    a = b = torch.zeros(16, 16, dtype=torch.float16)
    # 992 bytes of shared memory hold A (512 bytes) but not all of B's tile after it
    with pytest.raises(harness.EmulatedCudaError, match="32 bytes past the end of the dynamic shared memory"):
        emu.call("wmma", [a, b, torch.zeros(16, 16)], [0, 0, 16, 0, 992])


def test_dynamic_shared_memory_above_48k_needs_the_opt_in(emu):
    a = b = torch.zeros(16, 16, dtype=torch.float16)
    c = torch.zeros(16, 16)
    with pytest.raises(harness.EmulatedCudaError, match="cudaError 1: .*cudaFuncSetAttribute"):
        emu.call("wmma", [a, b, c], [0, 0, 16, 0, 64 * 1024])
    emu.call("wmma", [a, b, c], [0, 0, 16, 64 * 1024, 64 * 1024])  # opted in: runs
    sm86 = harness.Emulator(sources=[BROKEN], device=dict(harness.A100, major=8, minor=6, smem_optin=101376))
    with pytest.raises(harness.EmulatedCudaError, match="opt-in limit of 101376"):
        sm86.call("wmma", [a, b, c], [0, 0, 16, 106496, 106496])


def _mma(emu, mode, dtype=torch.float16):
    rng = np.random.default_rng(2)
    a, b = (torch.tensor(rng.standard_normal((16, 16)), dtype=dtype) for _ in range(2))
    c = torch.full((16, 16), float("nan"))
    emu.call("mma", [a, b, c], [mode, dtype == torch.bfloat16])
    return c, (a.double() @ b.double())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 2, 3])
def test_mma_m16n8k16_fragments_and_ldmatrix_against_float64(emu, mode, dtype):
    """Fragments built at the PTX ISA's indices (mode 0), or loaded by ldmatrix.x4 / .trans (2, 3), give
    A B: the emulated mma moves each lane's registers exactly as the ISA lays them out."""
    c, want = _mma(emu, mode, dtype)
    np.testing.assert_allclose(c.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_wrong_fragment_index_gives_a_wrong_product(emu):
    """a[1] and a[2] swapped (rows 8-15 taken for columns 8-15): the emulator, holding each lane to its own
    registers as the hardware does, computes the wrong product too, instead of hiding the bug."""
    c, want = _mma(emu, 1)
    assert not torch.isnan(c).any() and (c.double() - want).abs().max() > 0.5


def test_mma_needs_all_32_lanes(emu):
    with pytest.raises(harness.EmulatedCudaError, match="lane 31 did not execute it"):
        _mma(emu, 4)


def _cp_async(emu, mode, threads=32):
    x = torch.arange(4 * threads + 4, dtype=torch.float32) + 1
    out = torch.full((4 * threads + 4,), float("nan"))
    emu.call("cp_async", [x, out], [threads, mode])
    return x[:4 * threads], out[:4 * threads]


@pytest.mark.parametrize("mode", [0, 3])
def test_cp_async_lands_at_its_wait_group(emu, mode):
    x, out = _cp_async(emu, mode)
    assert torch.equal(out, torch.roll(x, -4))


@pytest.mark.parametrize("mode, what", [(1, "read before the wait"), (4, "wait_group 1 leaves the copy in flight"),
                                        (7, "the destination is undefined while a copy is in flight")])
def test_cp_async_not_yet_waited_for_reads_nan(emu, mode, what):
    """A copy lands at its thread's wait_group: a thread that reads it earlier finds the NaN prefill. (With a
    late wait, a copy whose thread ran ahead to it is there: the fiber order decides which reads fail, as
    timing would on a GPU, but the first reader always does.)"""
    _, out = _cp_async(emu, mode)
    assert torch.isnan(out).any(), what
    if mode == 7:  # each thread reads its own destination, in flight
        assert torch.isnan(out).all()


def test_cp_async_never_waited_for_fails_the_launch(emu):
    with pytest.raises(harness.EmulatedCudaError, match="never waited for .*missing cp.async.wait_group"):
        _cp_async(emu, 2)


@pytest.mark.parametrize("mode", [5, 6])
def test_cp_async_refuses_misaligned_addresses(emu, mode):
    with pytest.raises(harness.EmulatedCudaError, match="must both be 16-byte aligned"):
        _cp_async(emu, mode)


@pytest.mark.parametrize("grid, block", [((0, 1), 32), ((1, 65536), 32), ((1, 1), 1025)])
def test_launches_a_gpu_refuses_are_refused(emu, grid, block):
    with pytest.raises(harness.EmulatedCudaError, match="cudaError 9: invalid launch configuration"):
        emu.call("launch_config", [torch.zeros(1)], [*grid, block])


@pytest.mark.parametrize("device, runs", [((9, 0, "80;90"), True), ((8, 9, "80;90"), True),
                                          ((12, 0, "80;90"), False), ((12, 0, "80;90;90+PTX"), True),
                                          ((7, 5, "80;90;90+PTX"), False)])
def test_a_gpu_without_a_kernel_image_refuses_the_launch(device, runs):
    major, minor, images = device
    emu = harness.Emulator(sources=[BROKEN], device=dict(harness.A100, major=major, minor=minor, images=images))
    if runs:
        emu.call("launch_config", [torch.zeros(1)], [1, 1, 32])
    else:
        with pytest.raises(harness.EmulatedCudaError, match="cudaError 209: no kernel image"):
            emu.call("launch_config", [torch.zeros(1)], [1, 1, 32])


def test_vector_atomics_are_sm90_only_and_need_16_byte_alignment(emu, tmp_path):
    """atomicAdd(float4*) adds each component atomically (32 threads: 32 x (1, 2, 3, 4)); a misaligned address
    fails the launch, as it faults on the GPU; and CUDA declares it for sm_90 only, so an sm_80 build fails."""
    sm90 = harness.Emulator(sources=[BROKEN], arch=900)
    out = torch.zeros(12)
    sm90.call("vector_add", [out], [4])
    assert out.tolist() == [0] * 4 + [32, 64, 96, 128] + [0] * 4
    with pytest.raises(harness.EmulatedCudaError, match=r"atomicAdd\(float4\*\): the address is not 16-byte aligned"):
        sm90.call("vector_add", [torch.zeros(12)], [2])
    with pytest.raises(harness.EmulatedCudaError, match="cudaError 98"):
        emu.call("vector_add", [torch.zeros(12)], [4])
    source = tmp_path / "add4.cu"
    source.write_text("#include <cuda_runtime.h>\n__global__ void k(float* p) "
                      "{ atomicAdd(reinterpret_cast<float4*>(p), make_float4(1, 2, 3, 4)); }\n")
    with pytest.raises(harness.EmulationBuildError):
        harness.build([source])


def test_unemulated_cuda_is_a_clear_build_error(tmp_path):
    source = tmp_path / "uses_ldg.cu"
    source.write_text("#include <cuda_runtime.h>\n__global__ void k(const float* x, float* y) "
                      "{ y[0] = __ldg(x); }\n")
    with pytest.raises(harness.EmulationBuildError, match="not emulated.*__ldg"):
        harness.build([source])


# ---- sanitizer builds: one std::thread per CUDA thread ------------------------------------------------------

@pytest.mark.slow
def test_address_sanitizer_catches_an_out_of_bounds_shared_read():
    emu = harness.Emulator(sources=[BROKEN], sanitizer="address")
    x, out = torch.arange(32, dtype=torch.float32), torch.zeros(32)
    emu.call("shifted", [x, out], [32, 0, 1])
    assert torch.equal(out, x)
    with pytest.raises(harness.SanitizerReport, match="heap-buffer-overflow"):
        emu.call("shifted", [x, out], [32, 1, 1])


@pytest.mark.slow
def test_thread_sanitizer_catches_a_race_and_a_missing_barrier():
    emu = harness.Emulator(sources=[BROKEN], sanitizer="thread")
    x, out = torch.ones(64), torch.zeros(1)
    emu.call("sum", [x, out], [64, 1, 64])  # atomicAdd: no report, the right sum
    assert out.item() == 64
    with pytest.raises(harness.SanitizerReport, match="data race"):
        emu.call("sum", [x, torch.zeros(1)], [64, 0, 64])
    x, out = _rotate(emu, 32, barrier=1)
    assert torch.equal(out, torch.roll(x, -1))
    with pytest.raises(harness.SanitizerReport, match="data race"):
        _rotate(emu, 32, barrier=0)
