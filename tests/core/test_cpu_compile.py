"""`polycom.ops.cpu_compile`: when the closed-form ops are compiled on CPU tensors, how often, and the eager fall-backs.

The suite runs eagerly (`tests/conftest.py` sets POLYCOM_CPU_COMPILE=0); the tests here turn compiling on
with the ``aot_eager`` backend (`aot_eager_compile`): Dynamo and AOTAutograd trace every closed-form
function whole exactly as with Inductor (``fullgraph``: a graph break fails the test; guards and
recompilations are Dynamo's), only the C++ code generation is skipped. Two tests run the real Inductor
build (results, and the on-disk cache key). Compilations are counted with Dynamo's own counters
(``unique_graphs``: graphs Dynamo produced), never timed. Oracle for results: the same block run eagerly.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import polycom
from polycom.ops import closed_form, cpu_compile


def _reset_compiled(monkeypatch, backend: str) -> None:
    monkeypatch.setattr(cpu_compile, "BACKEND", backend)
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_eager_variants", set())
    monkeypatch.setattr(cpu_compile, "_variants", [])
    cpu_compile._compiled_version.cache_clear()
    torch._dynamo.reset()
    counters.clear()


@pytest.fixture
def aot_eager_compile(monkeypatch):
    """POLYCOM_CPU_COMPILE=1 with the aot_eager backend; returns the names of the functions compiled."""
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    _reset_compiled(monkeypatch, "aot_eager")
    yield cpu_compile._variants
    getattr(cpu_compile._compiled_version, "cache_clear", lambda: None)()  # a test may have replaced it
    torch._dynamo.reset()


def _names(variants) -> set[str]:
    return {name for name, _ in variants}


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _block_grads(name, fused=True, scale=1.0, shape=(2, 5)):
    torch.manual_seed(0)
    m = polycom.MLP(16, name, 24, fused=fused)
    x = (torch.randn(*shape, 16) * scale).requires_grad_(True)
    with polycom.use_backend("torch"):
        y = m(x)
        grads = torch.autograd.grad(y, [x, *m.parameters()], torch.randn_like(y))
    return y.detach(), grads


@pytest.mark.parametrize("name", ["polynorm", "polyrelu", "polynorm_glu", "polyrelu_glu", "swiglu"])
def test_compiled_closed_form_matches_eager(aot_eager_compile, monkeypatch, name):
    y, grads = _block_grads(name, scale=3.0)
    assert aot_eager_compile, "no closed-form function went through torch.compile"
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    y_eager, grads_eager = _block_grads(name, scale=3.0)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unfused_ops_compile_too(aot_eager_compile):
    y, grads = _block_grads("polynorm", fused=False)
    assert {"poly_norm_forward", "poly_norm_backward"} <= _names(aot_eager_compile)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)


# --- when: eager first calls, compiled inside training loops ------------------------------------------------

_README_LINES = """
import json, time, torch, polycom
from torch._dynamo.utils import counters
t0 = time.perf_counter()
act = polycom.PolyNorm(order=3)
y = act(torch.randn(4, 128, 8256))
t1 = time.perf_counter()
x = torch.randn(2, 96, 8256, requires_grad=True)
act(x).sum().backward()
t2 = time.perf_counter()
print(json.dumps({"graphs": counters["stats"]["unique_graphs"], "frames": sum(counters["frames"].values()),
                  "forward_s": t1 - t0, "forward_backward_s": t2 - t1}))
"""


def test_readme_lines_compile_nothing_in_a_fresh_process(tmp_path):
    """The README's usage lines, as a new user runs them (POLYCOM_CPU_COMPILE unset, empty Inductor cache):
    the first call and a forward + backward at a new shape run eagerly; Dynamo produces no graph."""
    env = {k: v for k, v in os.environ.items() if k != cpu_compile.ENV_VAR}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    done = subprocess.run([sys.executable, "-c", _README_LINES], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["graphs"] == 0 and result["frames"] == 0, result
    assert not any((tmp_path / "inductor").rglob("*"))  # nothing built (torch creates the empty folder)


def test_first_calls_are_eager_and_training_loops_compile(aot_eager_compile, monkeypatch):
    monkeypatch.delenv(cpu_compile.ENV_VAR)
    _block_grads("polyrelu")
    y = polycom.poly_norm(torch.randn(3, 8), torch.ones(3), torch.zeros(1))
    assert not aot_eager_compile and _graphs() == 0 and not cpu_compile.compile_requested()
    with cpu_compile.training_loop():
        with cpu_compile.training_loop():  # blocks nest
            pass
        assert cpu_compile.compile_requested()
        _block_grads("polyrelu")
    assert {"poly_relu_forward", "poly_relu_backward"} <= _names(aot_eager_compile)
    assert not cpu_compile.compile_requested() and torch.isfinite(y).all()


def test_the_variable_forces_either_way(aot_eager_compile, monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    with cpu_compile.training_loop():
        _block_grads("polynorm")
    assert not aot_eager_compile
    for value in ("", "auto"):
        monkeypatch.setenv(cpu_compile.ENV_VAR, value)
        _block_grads("polynorm")
        assert not aot_eager_compile
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    _block_grads("polynorm")  # outside any training loop
    assert "poly_norm_forward" in _names(aot_eager_compile)


def test_train_runs_its_loop_compiled(monkeypatch, tmp_path):
    """`polycom train` (and `polycom compare`, which calls it) build and fit the model inside `training_loop()`."""
    from polycom.train import load_config
    from polycom.train import trainer as trainer_module

    seen = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.append(cpu_compile.compile_requested())

        def fit(self):
            seen.append(cpu_compile.compile_requested())
            return "done"

    monkeypatch.delenv(cpu_compile.ENV_VAR)
    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    assert trainer_module.train(load_config(preset="tiny"), tmp_path / "run") == "done"
    assert seen == [True, True] and not cpu_compile.compile_requested()


# --- how often: one graph per variant, shared by every size ----------------------------------------------------


@pytest.mark.parametrize(("name", "fused"), [("polynorm", True), ("polynorm", False), ("polyrelu_glu", True)])
def test_twenty_row_counts_share_one_graph(aot_eager_compile, monkeypatch, name, fused):
    """Token counts that change from call to call (variable batches, evaluation, generation) reuse the graphs
    of the first call (one row runs eagerly; the budget of 2 is for a size-1 specialisation). No warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the eager fall-back warns with it
        _block_grads(name, fused, shape=(4,))  # warm-up (PolyNorm: as many rows as statistics, r + 1)
        warm = _graphs()
        assert warm >= 2
        for rows in [1, 2, 4, 5, 6, 8, 9, 11, 13, 16, 17, 20, 23, 31, 32, 40, 47, 64, 100, 129]:
            _block_grads(name, fused, shape=(rows,))
        assert _graphs() - warm <= 2, counters["stats"]
        assert not cpu_compile._eager_variants
        for rows in (1, 2, 129):  # the shared graphs give the eager numbers at every size, 1 included
            y, grads = _block_grads(name, fused, shape=(rows,), scale=3.0)
            with _eager(monkeypatch):
                y_eager, grads_eager = _block_grads(name, fused, shape=(rows,), scale=3.0)
            torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
            for got, want in zip(grads, grads_eager, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert _graphs() - warm <= 2, counters["stats"]


def test_twenty_row_counts_of_the_op_share_one_graph(aot_eager_compile):
    """`PolyNorm` itself, forward + backward of ``.sum()`` (an expanded gradient), first with as many rows as
    it has statistics (r + 1 = 4: Dynamo's duck sizing would tie the two and specialise the row count)."""
    act = polycom.PolyNorm(order=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        act(torch.randn(4, 64, requires_grad=True)).sum().backward()
        warm = _graphs()
        for rows in range(5, 25):
            act(torch.randn(rows, 64, requires_grad=True)).sum().backward()
    assert warm == 2 and _graphs() == warm, counters["stats"]  # no recompilation at all


@contextlib.contextmanager
def _eager(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    yield
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")


def test_generation_shapes_share_one_graph(aot_eager_compile, monkeypatch):
    """(batch, tokens, d) with both leading sizes changing: a prompt, then one token at a time, other batches."""
    act = polycom.PolyNorm(order=3)
    with torch.no_grad():
        act(torch.randn(2, 9, 32))
        warm = _graphs()
        for batch, tokens in [(2, 1), (2, 1), (1, 17), (4, 3), (3, 5), (2, 33), (1, 1), (5, 2)]:
            x = torch.randn(batch, tokens, 32)
            y = act(x)
            with _eager(monkeypatch):
                torch.testing.assert_close(y, act(x), rtol=1e-5, atol=1e-5)
    assert _graphs() - warm <= 2, counters["stats"]


def test_each_dtype_order_and_eps_compiles_once(aot_eager_compile):
    """A test matrix of dtypes, orders, eps, ranks, odd widths and transposed inputs (which once hit Dynamo's
    recompile limit of one shared function and fell back with a warning): each (dtype, order, eps, rank)
    variant is traced once per layout, whatever the sizes; no warning, no variant left eager."""
    combos = [(dtype, 3, 1e-6) for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)]
    combos += [(torch.float32, 2, 1e-6), (torch.float32, 3, 1e-5)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", RuntimeWarning)  # the eager fall-back warns with it
        for dtype, order, eps in combos:
            act = polycom.PolyNorm(order=order, eps=eps)
            for shape, transposed in [((6, 33), False), ((9, 31), True), ((40, 17), True), ((5, 7, 65), False)]:
                x = torch.randn(*shape, dtype=dtype)
                act(x.transpose(-1, -2).contiguous().transpose(-1, -2) if transposed else x)
    assert len(aot_eager_compile) == 2 * len(combos)  # ranks 2 and 3
    assert _graphs() == 3 * len(combos), counters["stats"]  # rank 2 once per layout (contiguous, transposed)
    assert not cpu_compile._eager_variants


def test_a_variant_at_the_recompile_limit_runs_eagerly_without_a_warning(aot_eager_compile, monkeypatch):
    calls = []

    def at_limit(fn, key):
        def run(*args, **kwargs):
            calls.append(fn.__name__)
            raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile_limit reached")

        return run

    monkeypatch.setattr(cpu_compile, "_compiled_version", at_limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the eager fall-back warns with it
        y, grads = _block_grads("polyrelu")
        _block_grads("polyrelu")
    assert calls == ["poly_relu_forward", "poly_relu_backward"]  # then eager: not tried again
    assert cpu_compile.active()  # the other variants still compile
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    torch.testing.assert_close(y, _block_grads("polyrelu")[0], rtol=0, atol=0)


def test_variant_keys_hold_no_data_size():
    w, b = torch.ones(3), torch.zeros(1)
    keys = {
        cpu_compile.variant_key(closed_form.poly_norm_forward, (torch.randn(n, m), None, w, b, 1e-6), {})
        for n, m in [(1, 8), (7, 8), (7, 9)]
    }
    assert len(keys) == 1
    other = [
        (torch.randn(7, 8, dtype=torch.float64), None, w, b, 1e-6),
        (torch.randn(7, 8), None, torch.ones(4), b, 1e-6),
        (torch.randn(7, 8), None, w, b, 1e-5),
        (torch.randn(2, 7, 8), None, w, b, 1e-6),
        (torch.randn(7, 8), torch.randn(7, 8), w, b, 1e-6),
    ]
    for args in other:
        assert cpu_compile.variant_key(closed_form.poly_norm_forward, args, {}) not in keys


# --- the on-disk cache key ------------------------------------------------------------------------------------


def test_cache_tag_names_the_version_and_the_sources():
    tag = cpu_compile.cache_tag()
    assert tag.startswith(f"polycom-{polycom.__version__}-") and len(tag.rsplit("-", 1)[1]) == 16


def _inductor_build_counts(monkeypatch, tag: str) -> dict:
    monkeypatch.setattr(cpu_compile, "cache_tag", lambda: tag)
    _reset_compiled(monkeypatch, "inductor")
    w, b = torch.tensor([0.2, 0.3, 0.5]), torch.zeros(1)
    y = cpu_compile.compiled(closed_form.poly_relu_forward)(torch.randn(5, 12), None, w, b)
    assert torch.isfinite(y).all()
    return {k: counters["inductor"][k] for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")} | {
        k: counters["aot_autograd"][k] for k in ("autograd_cache_hit", "autograd_cache_miss")
    }


def test_polycoms_compile_settings_apply_to_its_own_builds_only(monkeypatch):
    """While polycom's variants compile: the cache key tag and no duck sizing; the user's settings before and
    after, and for the user's own compiles."""
    import torch.fx.experimental._config as fx_config

    seen = []

    def recording_backend(gm, example_inputs):
        seen.append((torch.compiler.config.cache_key_tag, fx_config.use_duck_shape))
        return gm.forward

    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    _reset_compiled(monkeypatch, recording_backend)
    with torch.compiler.config.patch(cache_key_tag="users-tag"):  # (monkeypatch would delete it on undo)
        polycom.poly_norm(torch.randn(6, 8), torch.ones(3), torch.zeros(1))
        assert seen == [(f"users-tag|{cpu_compile.cache_tag()}", False)]
        assert torch.compiler.config.cache_key_tag == "users-tag" and fx_config.use_duck_shape
        torch.compile(lambda t: t * 2, backend=recording_backend)(torch.randn(3))
        assert seen[-1] == ("users-tag", True)
    assert torch.compiler.config.cache_key_tag == ""
    cpu_compile._compiled_version.cache_clear()
    torch._dynamo.reset()


def test_a_cache_from_other_polycom_sources_is_not_reused(monkeypatch, tmp_path):
    """Inductor's on-disk cache filled by one polycom (tag "old") serves the same polycom again, but never one
    with other sources (tag "new"): an upgrade builds afresh instead of reusing code for other formulas."""
    if not cpu_compile._compiler_found():
        pytest.skip("no C++ compiler on this machine: nothing is compiled")
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    first = _inductor_build_counts(monkeypatch, "polycom-old")
    assert first["fxgraph_cache_miss"] >= 1 and first["fxgraph_cache_hit"] == 0, first
    same = _inductor_build_counts(monkeypatch, "polycom-old")
    assert same["fxgraph_cache_hit"] + same["autograd_cache_hit"] >= 1, same  # the cache works here
    upgraded = _inductor_build_counts(monkeypatch, "polycom-new")
    assert upgraded["fxgraph_cache_hit"] + upgraded["autograd_cache_hit"] == 0, upgraded
    assert upgraded["fxgraph_cache_miss"] >= 1, upgraded
    cpu_compile._compiled_version.cache_clear()
    torch._dynamo.reset()


# --- eager fall-backs -------------------------------------------------------------------------------------------


def test_without_a_cxx_compiler_one_warning_and_eager_results(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_compiler_found", lambda: False)
    monkeypatch.setattr(cpu_compile, "_compiled_version", lambda fn, key: pytest.fail("compiled without a compiler"))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as caught:
        y, _ = _block_grads("polynorm")
        _block_grads("polyrelu")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1  # once per process
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    torch.testing.assert_close(y, _block_grads("polynorm")[0], rtol=0, atol=0)


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)

    def broken(fn, key):
        def run(*args, **kwargs):
            raise RuntimeError("C++ compile failed: cc1plus killed")

        return run

    monkeypatch.setattr(cpu_compile, "_compiled_version", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, grads = _block_grads("polyrelu")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "cc1plus killed" in messages[0]
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    y_eager, grads_eager = _block_grads("polyrelu")
    torch.testing.assert_close(y, y_eager, rtol=0, atol=0)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_a_bad_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(cpu_compile.ENV_VAR, value)
    with pytest.raises(ValueError, match="POLYCOM_CPU_COMPILE"):
        _block_grads("polynorm")


def test_tensors_off_the_cpu_run_the_eager_function(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_compiler_found", lambda: True)
    monkeypatch.setattr(cpu_compile, "_compiled_version", lambda fn, key: pytest.fail("compiled a non-CPU call"))
    x = torch.empty(3, device="meta")
    assert cpu_compile.compiled(lambda t, *, k: (t.device.type, k))(x, k=2) == ("meta", 2)


@pytest.mark.parametrize("name", ["polyrelu", "polynorm_glu"])
def test_real_inductor_build_matches_eager(monkeypatch, name):
    """The compiled path as training loops get it: Inductor's C++ code for the closed form (fused MLP: forward,
    recompute and backward), against the eager closed form."""
    if not cpu_compile._compiler_found():
        pytest.skip("no C++ compiler on this machine: the eager fall-back is what runs (tested above)")
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    _reset_compiled(monkeypatch, "inductor")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed build would fall back with a warning
        y, grads = _block_grads(name, scale=3.0)
    assert cpu_compile.active() and _graphs() >= 2
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    y_eager, grads_eager = _block_grads(name, scale=3.0)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
