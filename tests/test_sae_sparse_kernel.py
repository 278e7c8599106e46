"""The fused sparse/dense training kernels against the plain autograd reference, finite differences and the choice."""

from __future__ import annotations

import pytest
import torch

from chatsae.sae import SAEConfig, create_sae, sparse_kernel
from chatsae.sae.base import SAE

pytestmark = pytest.mark.usefixtures("single_thread")

D_IN, D_SAE, BATCH = 32, 256, 96
TOL = 1e-5


def make_sae(arch: str, trained: bool, dtype: torch.dtype = torch.float32, **kw: object) -> tuple[SAE, torch.Tensor]:
    """An SAE with random biases and a batch; ``trained`` sets per-latent thresholds so that L0 is ~15."""
    torch.manual_seed(0)
    cfg = SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, k=8, **kw)  # type: ignore[arg-type]
    sae = create_sae(cfg).to(dtype)
    x = torch.randn(BATCH, D_IN, dtype=dtype)
    with torch.no_grad():
        sae.b_dec.normal_(0.0, 0.1)
        sae.b_enc.normal_(0.0, 0.1)
        if arch == "jumprelu":
            z = sae.encoder_input(x) @ sae.W_enc + sae.b_enc
            theta = z.quantile(1.0 - 15.0 / D_SAE, dim=0) if trained else torch.full((D_SAE,), 0.05, dtype=dtype)
            theta = theta.clamp_min(1e-3)
            if cfg.jumprelu_threshold_param == "log":
                sae.log_threshold.copy_(theta.log())
            else:
                sae.threshold_param.copy_(theta)
    return sae, x


def loss_and_grads(sae: SAE, kernel: str, x: torch.Tensor, dead: torch.Tensor | None = None):
    sae.kernel = kernel  # type: ignore[attr-defined]
    sae.zero_grad(set_to_none=True)
    out = sae.loss(x, 0.7, dead)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in sae.named_parameters() if p.grad is not None}
    return out, grads


def assert_close(out, grads, ref, ref_grads) -> None:
    for name in ("loss", "mse", "sparsity", "aux"):
        a, b = getattr(out, name).detach(), getattr(ref, name).detach()
        assert abs(float(a - b)) <= TOL * max(abs(float(b)), 1e-6), name
    assert torch.equal(out.feature_acts.detach() > 0, ref.feature_acts.detach() > 0)
    torch.testing.assert_close(out.feature_acts.detach(), ref.feature_acts.detach(), rtol=TOL, atol=1e-6)
    torch.testing.assert_close(out.x_hat.detach(), ref.x_hat.detach(), rtol=TOL, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        err = float((grads[name] - g).norm() / g.norm())
        assert err <= TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize(("param", "apply_b_dec"), [("direct", False), ("log", True)])
def test_jumprelu_kernels_match_reference(kernel: str, trained: bool, param: str, apply_b_dec: bool) -> None:
    sae, x = make_sae(
        "jumprelu", trained, jumprelu_threshold_param=param, apply_b_dec_to_input=apply_b_dec, jumprelu_bandwidth=0.05
    )
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, kernel, x)
    assert out.mse.grad_fn.path == kernel  # the path asked for really ran
    assert_close(out, grads, ref, ref_grads)
    # the case is not trivial: latents fire, the threshold window holds entries (theta gets a gradient)
    l0 = float(ref.sparsity.detach())
    assert (10 <= l0 <= 20) if trained else l0 > 40
    tname = "log_threshold" if param == "log" else "threshold_param"
    assert int((ref_grads[tname] != 0).sum()) >= 5


@pytest.mark.parametrize("n_dead", [0, 3, 80, D_SAE])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_topk_sparse_matches_reference(n_dead: int, apply_b_dec: bool) -> None:
    sae, x = make_sae("topk", False, apply_b_dec_to_input=apply_b_dec)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE)[:n_dead]] = True
    ref, ref_grads = loss_and_grads(sae, "reference", x, dead)
    out, grads = loss_and_grads(sae, "sparse", x, dead)
    assert type(out.mse.grad_fn).__name__ == "TopKLossBackward"
    assert (float(ref.aux.detach()) > 0) == (n_dead > 0)
    assert_close(out, grads, ref, ref_grads)


def test_jumprelu_sparse_on_float64_matches_to_rounding() -> None:
    """In float64 the sparse path agrees with the reference far below the float32 tolerance."""
    sae, x = make_sae("jumprelu", True, torch.float64, jumprelu_bandwidth=0.05)
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, "sparse", x)
    for name, g in ref_grads.items():
        assert float((grads[name] - g).norm() / g.norm()) < 1e-12, name


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_sparse_gradients_match_finite_differences(arch: str) -> None:
    """The true gradients (W_enc, b_enc, W_dec, b_dec) of the sparse loss against central differences in float64.

    No dead latents: AuxK's target is a detached residual, which finite differences would not hold fixed."""
    sae, x = make_sae(arch, True, torch.float64, apply_b_dec_to_input=True)
    dead = None
    sae.kernel = "sparse"  # type: ignore[attr-defined]
    sae.zero_grad(set_to_none=True)
    sae.loss(x, 0.0, dead).loss.backward()
    gen = torch.Generator().manual_seed(1)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        p = getattr(sae, name)
        direction = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        h = 1e-6
        with torch.no_grad():
            p += h * direction
            up = float(sae.loss(x, 0.0, dead).loss)
            p -= 2 * h * direction
            down = float(sae.loss(x, 0.0, dead).loss)
            p += h * direction
        fd = (up - down) / (2 * h)
        analytic = float((p.grad * direction).sum())
        assert abs(fd - analytic) <= 1e-5 * max(abs(analytic), 1.0), name


def test_auto_falls_back_to_dense_at_high_l0() -> None:
    assert sparse_kernel.choose("auto", 0.5) == "dense"
    assert sparse_kernel.choose("auto", 0.005) == "sparse"
    # the measured crossover (docs/performance.md): sparse still 1.15x at density 0.107, 0.94x at 0.126
    assert sparse_kernel.choose("auto", 0.09) == "sparse" and sparse_kernel.choose("auto", 0.11) == "dense"
    assert sparse_kernel.choose("sparse", 0.9) == "sparse"
    sae, x = make_sae("jumprelu", False)  # theta 0.05: about half the latents fire
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, "auto", x)
    assert out.mse.grad_fn.path == "dense"
    assert_close(out, grads, ref, ref_grads)
    sae, x = make_sae("jumprelu", True)  # L0 ~15 of 256 latents (+ the window): below SPARSE_MAX_DENSITY
    out, _ = loss_and_grads(sae, "auto", x)
    assert out.mse.grad_fn.path == "sparse"


def test_topk_auto_uses_reference_when_k_is_large() -> None:
    sae, x = make_sae("topk", False)
    sae.cfg.k = D_SAE // 8  # 12.5% of the latents: above TOPK_SPARSE_MAX_DENSITY
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, "auto", x)
    assert type(out.mse.grad_fn).__name__ != "TopKLossBackward"
    assert_close(out, grads, ref, ref_grads)


def test_device_rule_of_auto_without_a_gpu() -> None:
    """The routing rule on a CUDA device, checked here on stand-ins for the tensors (the kernels themselves are run on a
    GPU by tests/test_sae_sparse_kernel_cuda.py): fused from ``CUDA_MIN_WEIGHTS`` encoder entries on, reference below
    and where the caller gives no width (TopK with AuxK); always on the CPU; never on other devices, under autocast,
    for inputs that need a gradient or when the dtypes differ."""
    from types import SimpleNamespace

    def fake(device: str, numel: int = 0, dtype: torch.dtype = torch.float32, grad: bool = False) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(device), numel=lambda: numel, dtype=dtype, requires_grad=grad)

    wide = sparse_kernel.CUDA_MIN_WEIGHTS
    allowed = sparse_kernel.fused_allowed
    assert allowed(fake("cuda"), fake("cuda", wide), cuda_min_weights=wide)  # type: ignore[arg-type]
    assert not allowed(fake("cuda"), fake("cuda", wide - 1), cuda_min_weights=wide)  # type: ignore[arg-type]
    assert not allowed(fake("cuda"), fake("cuda", wide), cuda_min_weights=None)  # type: ignore[arg-type]
    assert allowed(fake("cpu"), fake("cpu", 1), cuda_min_weights=None)  # type: ignore[arg-type]
    assert not allowed(fake("mps"), fake("mps", wide), cuda_min_weights=wide)  # type: ignore[arg-type]
    assert not allowed(fake("cuda", grad=True), fake("cuda", wide), cuda_min_weights=wide)  # type: ignore[arg-type]
    assert not allowed(fake("cuda"), fake("cuda", wide, torch.bfloat16), cuda_min_weights=wide)  # type: ignore[arg-type]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not allowed(fake("cpu"), fake("cpu", 1))  # type: ignore[arg-type]


def test_auto_keeps_reference_when_x_needs_grad() -> None:
    sae, x = make_sae("jumprelu", True)
    x.requires_grad_(True)
    sae.kernel = "auto"
    out = sae.loss(x, 0.7)
    out.loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_kernel_setting_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sparse_kernel.kernel_setting("dense") == "dense"
    monkeypatch.setenv("CHATSAE_SAE_KERNEL", "reference")
    assert sparse_kernel.kernel_setting("sparse") == "reference"
    monkeypatch.setenv("CHATSAE_SAE_KERNEL", "fast")
    with pytest.raises(ValueError, match="CHATSAE_SAE_KERNEL"):
        sparse_kernel.kernel_setting("auto")


def test_no_grad_forward_matches_reference() -> None:
    """Evaluation under no_grad (no autograd graph) gives the same loss as the reference."""
    sae, x = make_sae("jumprelu", True)
    with torch.no_grad():
        sae.kernel = "sparse"
        a = sae.loss(x, 0.7)
        sae.kernel = "reference"
        b = sae.loss(x, 0.7)
    assert abs(float(a.loss - b.loss)) <= TOL * abs(float(b.loss))


@pytest.mark.parametrize(
    ("arch", "kernel", "n_dead"),
    [("jumprelu", "sparse", 0), ("jumprelu", "dense", 0), ("topk", "sparse", 0), ("topk", "sparse", 80)],
)
def test_fire_counts_equal_the_count_from_feature_acts(arch: str, kernel: str, n_dead: int) -> None:
    """The fused kernels hand the trainer each latent's firing count: the count of f > 1e-8 per column of the
    returned feature_acts (the reference code returns None and the trainer counts)."""
    sae, x = make_sae(arch, trained=True)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:n_dead] = True
    out, _ = loss_and_grads(sae, kernel, x, dead)
    assert out.fire_counts is not None
    torch.testing.assert_close(out.fire_counts, (out.feature_acts > 1e-8).sum(0).float(), rtol=0, atol=0)
    assert out.fire_counts.sum() > 0
    assert loss_and_grads(sae, "reference", x, dead)[0].fire_counts is None


def test_scratch_buffers_are_per_thread() -> None:
    """SAEs trained together run their steps in parallel threads: each thread gets its own scratch buffers."""
    import threading

    like = torch.zeros(1)
    here = sparse_kernel.scratch("t", (4, 8), like)
    assert sparse_kernel.scratch("t", (4, 8), like) is here  # reused within a thread
    there: list[torch.Tensor] = []
    t = threading.Thread(target=lambda: there.append(sparse_kernel.scratch("t", (4, 8), like)))
    t.start()
    t.join()
    assert there[0].data_ptr() != here.data_ptr()


def test_dense_kernel_gradients_in_parallel_threads_equal_serial_ones() -> None:
    """Several JumpReLU SAEs stepping at once in threads (``--cache none`` with several SAEs) get the gradients each
    gets alone (a scratch buffer shared between threads was overwritten mid-backward: the streamed-joint bug)."""
    import threading

    n, steps = 4, 30
    saes, xs = [], []
    for i in range(n):
        torch.manual_seed(i)
        cfg = SAEConfig(architecture="jumprelu", d_in=64, d_sae=1024, jumprelu_bandwidth=0.05)
        sae = create_sae(cfg)
        sae.kernel = "dense"  # type: ignore[attr-defined]
        saes.append(sae)
        xs.append(torch.randn(512, 64))

    def grads(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sae.zero_grad(set_to_none=True)
        sae.loss(x, 0.7).loss.backward()
        return {k: p.grad.clone() for k, p in sae.named_parameters() if p.grad is not None}

    alone = [grads(s, x) for s, x in zip(saes, xs, strict=True)]
    bad: list[str] = []

    def work(i: int) -> None:
        for _ in range(steps):
            g = grads(saes[i], xs[i])
            bad.extend(f"SAE {i} {k}" for k, t in g.items() if not torch.equal(t, alone[i][k]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, sorted(set(bad))
