"""Triton backend of the recurrence primitives against the float64 naive recurrences.

On CPU the kernels run through the Triton interpreter, which only takes effect when TRITON_INTERPRET=1
is set before triton is first imported; the rest of the suite may already have imported triton in
this process. So the CPU cases run once, together, in a child pytest process started with the
variable set, and each CPU test here reports the child's verdict for its own test id (when this
process already interprets, they simply run here). With CUDA the same checks also run on the GPU in
this process, at larger sizes and in bfloat16 too.

Every buffer the kernels allocate is NaN-filled for these tests, so an element a kernel forgets to
write fails the comparison.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

if sys.platform != "linux":  # a dependency on Linux only (no wheels elsewhere): there, a missing triton fails
    pytest.skip("triton is installed with hybridnas on Linux only", allow_module_level=True)
import triton  # noqa: E402, F401

from hybridnas.kernels import triton_common  # noqa: E402
from hybridnas.kernels.naive import naive_gated_delta_rule, naive_gated_linear_attention  # noqa: E402
from hybridnas.kernels.triton_delta import (  # noqa: E402
    triton_gated_delta_rule,
    triton_gated_delta_rule_step,
)
from hybridnas.kernels.triton_gla import (  # noqa: E402
    triton_gated_linear_attention,
    triton_gated_linear_attention_step,
)

INTERPRETED = triton_common.interpreting()  # kernels in this process run through the interpreter
HAS_CUDA = torch.cuda.is_available() and not INTERPRETED
CHILD_TIMEOUT_S = 900  # generous: the machine running the suite may be shared
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 2e-4, "bfloat16": 5e-2}  # max |err| / max |reference|, per tensor


@dataclass(frozen=True)
class Case:
    primitive: str  # "gla" or "delta"
    mode: str  # decay: "none", "g" (per head) or "gk" (per key channel)
    T: int  # sequence length (64-token chunks; odd lengths exercise the masked tail)
    K: int  # key head dim
    V: int  # value head dim
    dtype: str = "float32"  # input dtype of the kernel call
    h0: bool = True  # pass an initial state (and check its gradient)
    final: bool = True  # return the final state and use it in the loss
    out: bool = True  # use the output in the loss (False: only the final state carries gradient)
    strong: bool = False  # decays down to -40 per token: chunk cumsums far below exp's range
    B: int = 1  # batch
    H: int = 2  # heads

    @property
    def id(self) -> str:
        extra = "".join(
            [f"-{self.dtype}" if self.dtype != "float32" else "", "" if self.h0 else "-noh0",
             "" if self.final else "-nofinal", "" if self.out else "-noout", "-strong" if self.strong else ""]
        )
        return f"{self.primitive}-{self.mode}-B{self.B}H{self.H}-T{self.T}-K{self.K}-V{self.V}{extra}"


# Interpreter cases: few and small (the interpreter runs each program instance in Python), yet every
# primitive x decay mode, the masked tail (T = 1, 63, 65), two value blocks (V = 48), two key slices
# (K = 80), non-power-of-two dims, batch > 1, strong decays, runs without initial / final state.
CPU_CASES = [
    Case("gla", "none", 65, 16, 48, B=2),
    Case("gla", "g", 63, 48, 16),
    Case("gla", "g", 1, 16, 16),
    Case("gla", "g", 130, 80, 16, h0=False, final=False),
    Case("gla", "gk", 65, 48, 48, strong=True, B=2, H=1),
    Case("gla", "gk", 63, 80, 16, h0=False),
    Case("gla", "gk", 1, 16, 16),
    Case("gla", "g", 65, 16, 16, dtype="bfloat16", strong=True),
    Case("gla", "gk", 65, 16, 16, out=False),
    Case("delta", "none", 65, 16, 48),
    Case("delta", "none", 1, 48, 16),
    Case("delta", "g", 63, 48, 16, strong=True, B=2),
    Case("delta", "g", 130, 80, 16, h0=False, final=False),
    Case("delta", "gk", 65, 48, 48),
    Case("delta", "gk", 63, 80, 16, strong=True, final=False),
    Case("delta", "gk", 65, 16, 16, dtype="bfloat16"),
    Case("delta", "g", 65, 16, 16, out=False),
]

# GPU cases: realistic head dims, several chunks, both dtypes.
CUDA_CASES = [
    Case(p, m, T, K, V, dtype=dt, B=2, H=3, strong=strong)
    for p in ("gla", "delta")
    for m in ("none", "g", "gk")
    for (T, K, V) in ((300, 128, 128), (257, 64, 96))
    for dt in ("float32", "bfloat16")
    for strong in ((False, True) if (T, dt) == (300, "float32") else (False,))
] + [Case("delta", "g", 200, 128, 256, dtype="bfloat16", B=1, H=2)]


def _params(cpu: list, cuda: list, ident: Callable[[object], str]) -> list:
    no_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (and the interpreter off)")
    return [pytest.param("cpu", c, id=f"cpu-{ident(c)}") for c in cpu] + [
        pytest.param("cuda", c, id=f"cuda-{ident(c)}", marks=no_cuda) for c in cuda
    ]


@pytest.fixture(autouse=True)
def _nan_filled_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_common, "NAN_FILL", True)


@pytest.fixture(scope="module")
def interpreter_verdicts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str | None]:
    """Run every selected CPU test of this module once in a child pytest with TRITON_INTERPRET=1.

    Returns test name -> None (passed) or the failure text."""
    module_file = Path(request.module.__file__).resolve()
    node_ids = [
        item.nodeid
        for item in request.session.items
        if Path(str(item.path)).resolve() == module_file
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("device") == "cpu"
    ]
    report = tmp_path_factory.mktemp("triton_interpreter") / "report.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *node_ids]
    proc = subprocess.run(
        cmd, cwd=str(request.config.rootpath), env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    if not report.exists():
        return {"__child__": f"interpreter run produced no report (exit {proc.returncode}):\n{tail}"}
    verdicts: dict[str, str | None] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problems = [el for el in case if el.tag in ("failure", "error", "skipped")]
        text = "\n".join(f"[{el.tag}] {el.get('message', '')}\n{el.text or ''}" for el in problems)
        verdicts[case.get("name", "")] = text or None
    verdicts["__child__"] = tail
    return verdicts


def _run(request: pytest.FixtureRequest, device: str, check: Callable[[], None]) -> None:
    """Run `check` here (CUDA, or CPU when this process interprets), else report the child's verdict."""
    if device == "cuda" or INTERPRETED:
        check()
        return
    verdicts = request.getfixturevalue("interpreter_verdicts")
    name = request.node.name
    if name not in verdicts:
        pytest.fail(f"{name} missing from the interpreter run:\n{verdicts['__child__']}", pytrace=False)
    if verdicts[name] is not None:
        pytest.fail(f"failed under the Triton interpreter:\n{verdicts[name]}", pytrace=False)


# --------------------------------------------------------------------------------------------------
# inputs and comparison


def _decay(shape: tuple[int, ...], strong: bool, gen: torch.Generator) -> torch.Tensor:
    """Log decays <= 0: mostly mild; `strong` mixes in values down to -40 (heavy tail)."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    if strong:
        return -40.0 * u**4
    return torch.nn.functional.logsigmoid(4.0 * u + 1.0) * 0.5 - 0.01


def _inputs(case: Case, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """float64 tensors on the CPU (rounded through the case dtype, so both sides see equal inputs)."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = case.B, case.T, case.H, case.K, case.V

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    k = randn(B, T, H, K)
    k = torch.nn.functional.normalize(k, dim=-1) if case.primitive == "delta" else k / math.sqrt(K)
    x: dict[str, torch.Tensor | None] = {"q": randn(B, T, H, K), "k": k, "v": randn(B, T, H, V)}
    x["beta"] = torch.rand(B, T, H, generator=gen, dtype=torch.float64) if case.primitive == "delta" else None
    x["g"] = _decay((B, T, H), case.strong, gen) if case.mode == "g" else None
    x["gk"] = _decay((B, T, H, K), case.strong, gen) if case.mode == "gk" else None
    x["initial_state"] = randn(B, H, K, V) if case.h0 else None
    dt = DTYPES[case.dtype]
    # the state stays float32; everything else is rounded to the input dtype
    return {n: (t.to(dt if n != "initial_state" else torch.float32).double() if t is not None else None)
            for n, t in x.items()}


def _assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got64 = got.detach().double().cpu()
    ref64 = ref.detach().double().cpu()
    assert torch.isfinite(got64).all(), f"{name}: {int((~torch.isfinite(got64)).sum())} non-finite elements"
    err = (got64 - ref64).abs().max().item()
    bound = tol * max(ref64.abs().max().item(), 1e-3)
    assert err <= bound, f"{name}: max abs error {err:.3e} > {bound:.3e} (tol {tol} x max |ref|)"


def _check_chunk(case: Case, device: str) -> None:
    torch.manual_seed(0)
    x = _inputs(case)
    dt = DTYPES[case.dtype]
    leaves = [n for n, t in x.items() if t is not None]
    ref_in = {n: (t.to(device).requires_grad_() if t is not None else None) for n, t in x.items()}
    kern_in = {
        n: (t.to(device=device, dtype=dt if n != "initial_state" else torch.float32).requires_grad_()
            if t is not None else None)
        for n, t in x.items()
    }
    common = dict(scale=None, output_final_state=case.final)
    if case.primitive == "gla":
        ref_in.pop("beta")
        kern_in.pop("beta")
        o_ref, s_ref = naive_gated_linear_attention(**ref_in, **common)
        o, s = triton_gated_linear_attention(**kern_in, **common)
    else:
        o_ref, s_ref = naive_gated_delta_rule(**ref_in, **common)
        o, s = triton_gated_delta_rule(**kern_in, **common)
    assert o.dtype == dt and o.device.type == device
    tol = TOLERANCE[case.dtype]
    _assert_close("o", o, o_ref, tol)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64).to(device)
    if case.out:
        loss_ref = (o_ref * do).sum()
        loss = (o.float() * do.float()).sum()
    else:
        loss_ref = loss = 0.0
    if case.final:
        assert s is not None and s.dtype == torch.float32
        _assert_close("final_state", s, s_ref, tol)
        ds = torch.randn(s_ref.shape, generator=gen, dtype=torch.float64).to(device)
        loss_ref = loss_ref + (s_ref * ds).sum()
        loss = loss + (s * ds.float()).sum()
    else:
        assert s is None
    names = [n for n in leaves if n in kern_in]
    # without the output in the loss, q gets no gradient (the reference graph does not use it)
    grads_ref = torch.autograd.grad(loss_ref, [ref_in[n] for n in names], allow_unused=True)
    grads = torch.autograd.grad(loss, [kern_in[n] for n in names], allow_unused=True)
    for n, got, ref in zip(names, grads, grads_ref):
        ref = torch.zeros_like(ref_in[n]) if ref is None else ref
        assert got is not None, f"d{n}: no gradient"
        assert got.dtype == kern_in[n].dtype, f"d{n}: dtype {got.dtype} != {kern_in[n].dtype}"
        _assert_close(f"d{n}", got, ref, tol)


def _check_step(primitive: str, mode: str, K: int, V: int, dtype: str, device: str) -> None:
    gen = torch.Generator().manual_seed(2)
    B, H = 2, 3
    dt = DTYPES[dtype]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dt).double()

    q, k, v = rand(B, H, K), rand(B, H, K), rand(B, H, V)
    if primitive == "delta":
        k = torch.nn.functional.normalize(k, dim=-1).to(dt).double()
    state = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64).float().double()
    beta = torch.rand(B, H, generator=gen, dtype=torch.float64).to(dt).double()
    g = -torch.rand(B, H, generator=gen, dtype=torch.float64).to(dt).double() if mode == "g" else None
    gk = -torch.rand(B, H, K, generator=gen, dtype=torch.float64).to(dt).double() if mode == "gk" else None

    def seq(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:, None]

    def dev(t: torch.Tensor | None, to: torch.dtype = dt) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=to)

    if primitive == "gla":
        o_ref, s_ref = naive_gated_linear_attention(
            seq(q), seq(k), seq(v), g=seq(g), gk=seq(gk), initial_state=state, output_final_state=True
        )
        with torch.no_grad():
            o, s = triton_gated_linear_attention_step(
                dev(q), dev(k), dev(v), dev(state, torch.float32), g=dev(g), gk=dev(gk)
            )
    else:
        o_ref, s_ref = naive_gated_delta_rule(
            seq(q), seq(k), seq(v), seq(beta), g=seq(g), gk=seq(gk), initial_state=state, output_final_state=True
        )
        with torch.no_grad():
            o, s = triton_gated_delta_rule_step(
                dev(q), dev(k), dev(v), dev(beta), dev(state, torch.float32), g=dev(g), gk=dev(gk)
            )
    assert o.dtype == dt and s.dtype == torch.float32
    tol = TOLERANCE[dtype]
    _assert_close("o", o, o_ref[:, 0], tol)
    _assert_close("new_state", s, s_ref, tol)


# --------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("device, case", _params(CPU_CASES, CUDA_CASES, lambda c: c.id))
def test_triton_chunk_matches_naive(request: pytest.FixtureRequest, device: str, case: Case) -> None:
    """Output, final state and all input gradients of the chunked kernels vs float64 naive."""
    _run(request, device, lambda: _check_chunk(case, device))


STEP_CPU = [(p, m, 48, 16, "float32") for p in ("gla", "delta") for m in ("none", "g", "gk")]
STEP_CUDA = [(p, m, 128, 128, dt) for p in ("gla", "delta") for m in ("none", "g", "gk") for dt in DTYPES]


@pytest.mark.parametrize("device, spec", _params(STEP_CPU, STEP_CUDA, lambda s: "-".join(map(str, s))))
def test_triton_step_matches_naive(request: pytest.FixtureRequest, device: str, spec: tuple) -> None:
    """One decode token: output and new state vs the naive recurrence run for one token."""
    _run(request, device, lambda: _check_step(*spec, device=device))


def _step_with_grad(device: str) -> None:
    q = torch.randn(1, 2, 16, device=device, requires_grad=True)
    state = torch.zeros(1, 2, 16, 16, device=device)
    with pytest.raises(NotImplementedError, match="no backward"):
        triton_gated_linear_attention_step(q, q.detach(), torch.randn(1, 2, 16, device=device), state)
    with pytest.raises(NotImplementedError, match="no backward"):
        triton_gated_delta_rule_step(
            q, q.detach(), torch.randn(1, 2, 16, device=device), torch.rand(1, 2, device=device), state
        )


@pytest.mark.parametrize("device, _", _params([None], [None], lambda _: "step-grad"))
def test_triton_step_refuses_autograd(request: pytest.FixtureRequest, device: str, _: None) -> None:
    """The decode step has no backward: it must refuse inputs that require grad, not drop the graph."""
    _run(request, device, lambda: _step_with_grad(device))


def test_triton_rejects_bad_arguments() -> None:
    """Argument errors name the argument (raised before any kernel launch, on any device)."""
    q = torch.randn(1, 4, 2, 16)
    v = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="g and gk"):
        triton_gated_linear_attention(q, q, v, g=torch.zeros(1, 4, 2), gk=torch.zeros(1, 4, 2, 16))
    with pytest.raises(ValueError, match=r"v: expected shape \[B, T, H, V\]"):
        triton_gated_linear_attention(q, q, torch.randn(1, 5, 2, 8))
    with pytest.raises(ValueError, match=r"beta: expected shape \[B, T, H\]"):
        triton_gated_delta_rule(q, q, v, torch.rand(1, 4, 3))
    with pytest.raises(ValueError, match=r"initial_state: expected shape \[B, H, K, V\]"):
        triton_gated_linear_attention(q, q, v, initial_state=torch.zeros(1, 2, 16, 9))
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):
        triton_gated_linear_attention(q.double(), q.double(), v.double())


@pytest.mark.skipif(INTERPRETED, reason="with the interpreter on, CPU tensors are valid inputs")
def test_triton_cpu_tensors_need_interpreter() -> None:
    """Without the interpreter, CPU tensors get a clear error pointing at the alternatives."""
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_gated_linear_attention(q, q, torch.randn(1, 4, 2, 8))
    with pytest.raises(RuntimeError, match="backend='chunk'"):
        triton_gated_delta_rule_step(q[:, 0], q[:, 0], torch.randn(1, 2, 8), torch.rand(1, 2), torch.zeros(1, 2, 16, 8))


# --------------------------------------------------------------------------------------------------
# GPU compilation, checked without a GPU: every kernel launch the wrappers make (forward, backward,
# decode step) is recorded on meta tensors, then compiled for sm_90 (H100) and held to its limits.

H100 = (90, 232448)  # compute capability, max shared memory per block in bytes
_COMPILED: dict[tuple, int] = {}  # launch key -> shared memory bytes (compiles shared across tests)


def _nvidia_backend() -> bool:
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except Exception:  # pragma: no cover - depends on the triton build
        return False


def _record_launches(monkeypatch: pytest.MonkeyPatch, fn: Callable[[], None]) -> list[tuple]:
    """Run `fn` with every Triton kernel of the backend swapped for a recorder; returns the launches."""
    from triton.runtime.jit import JITFunction

    from hybridnas.kernels import triton_delta, triton_gla

    launches: list[tuple] = []
    for module in (triton_common, triton_gla, triton_delta):
        for kernel in vars(module).values():
            if isinstance(kernel, JITFunction):

                def run(*args, grid, warmup, _kernel=kernel, **kwargs):  # noqa: ANN001, ANN003
                    launches.append((_kernel, args, kwargs))

                monkeypatch.setattr(kernel, "run", run)
    monkeypatch.setattr(triton_common, "interpreting", lambda: True)  # accept meta tensors
    fn()
    return launches


def _compile(kernel, args: tuple, kwargs: dict) -> int:  # noqa: ANN001
    """Compile one recorded launch for sm_90; returns its shared memory in bytes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kwargs = dict(kwargs)
    options = {"num_warps": kwargs.pop("num_warps", 4), "num_stages": kwargs.pop("num_stages", 3)}
    names = kernel.arg_names
    sig: dict[str, str] = {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            sig[name] = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32"
        else:
            sig[name] = "fp32"
    consts = {n: v for n, v in kwargs.items()}
    sig.update({n: "constexpr" for n in consts})
    key = (kernel.fn.__qualname__, tuple(sorted(sig.items())), tuple(sorted((n, str(v)) for n, v in consts.items())),
           tuple(sorted(options.items())))
    if key not in _COMPILED:
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", H100[0], 32),
            options=options,
        )
        _COMPILED[key] = int(compiled.metadata.shared)
    return _COMPILED[key]


# half inputs in every decay mode; float32 (3xTF32 dots) once, in a quick-to-compile configuration
COMPILE_SPECS = [(p, m, "bfloat16") for p in ("gla", "delta") for m in ("none", "g", "gk")] + [
    ("gla", "g", "float32")
]


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="kernels are interpreter functions in this process")
@pytest.mark.skipif(not _nvidia_backend(), reason="this triton build has no NVIDIA backend")
@pytest.mark.parametrize("primitive, mode, dtype", COMPILE_SPECS)
def test_triton_kernels_compile_for_h100(
    monkeypatch: pytest.MonkeyPatch, primitive: str, mode: str, dtype: str
) -> None:
    """Every launch of one configuration (K = V = 128, forward + backward + decode step) compiles for
    sm_90 and fits in an H100's shared memory."""
    dt = DTYPES[dtype]
    B, T, H, K, V = 1, 130, 2, 128, 128
    meta = dict(device="meta")

    def calls() -> None:
        q = torch.empty(B, T, H, K, dtype=dt, **meta, requires_grad=True)
        k = torch.empty(B, T, H, K, dtype=dt, **meta, requires_grad=True)
        v = torch.empty(B, T, H, V, dtype=dt, **meta, requires_grad=True)
        h0 = torch.empty(B, H, K, V, dtype=torch.float32, **meta, requires_grad=True)
        decay = {}
        if mode == "g":
            decay["g"] = torch.empty(B, T, H, dtype=dt, **meta, requires_grad=True)
        elif mode == "gk":
            decay["gk"] = torch.empty(B, T, H, K, dtype=dt, **meta, requires_grad=True)
        if primitive == "gla":
            o, s = triton_gated_linear_attention(q, k, v, **decay, initial_state=h0, output_final_state=True)
        else:
            beta = torch.empty(B, T, H, dtype=dt, **meta, requires_grad=True)
            o, s = triton_gated_delta_rule(q, k, v, beta, **decay, initial_state=h0, output_final_state=True)
        (o.float().sum() + s.sum()).backward()
        step_decay = {n: t[:, 0].detach() for n, t in decay.items()}
        with torch.no_grad():
            args = (q[:, 0].detach(), k[:, 0].detach(), v[:, 0].detach())
            if primitive == "gla":
                triton_gated_linear_attention_step(*args, h0.detach(), **step_decay)
            else:
                triton_gated_delta_rule_step(*args, beta[:, 0].detach(), h0.detach(), **step_decay)

    launches = _record_launches(monkeypatch, calls)
    launched = {kernel.fn.__name__ for kernel, _, _ in launches}
    expected = {"chunk_fwd_h_kernel", "chunk_fwd_o_kernel", "chunk_bwd_dh_kernel"}
    expected |= (
        {"chunk_bwd_dv_kernel", "gla_bwd_kernel", "gla_step_kernel"} if primitive == "gla"
        else {"delta_wy_kernel", "delta_bwd_dqk_kernel", "delta_bwd_wy_kernel", "delta_step_kernel"}
    )
    if mode != "none":
        expected.add("chunk_local_cumsum_kernel")
    if mode == "gk":
        expected |= {"chunk_pair_fwd_kernel", "chunk_pair_bwd_kernel"}
    assert expected <= launched, f"not launched: {sorted(expected - launched)}"
    for kernel, args, kwargs in launches:
        shared = _compile(kernel, args, kwargs)
        assert shared <= H100[1], f"{kernel.fn.__name__} needs {shared} B of shared memory > {H100[1]}"
