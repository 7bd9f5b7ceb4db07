"""lm-eval through the `polycom` model on the shipped local task; tasks, group and error handling."""

from __future__ import annotations

import json

import pytest
import torch
from eval_runs import fake_run, one_torch_thread  # noqa: F401  (autouse fixture)

from polycom.errors import UserError
from polycom.eval import LOCAL_TASKS_DIR, evaluate, load_eval_model

pytestmark = pytest.mark.slow  # lm-eval import + task index: ~10 s once per session


def _tiny_mc_docs() -> list[dict]:
    path = LOCAL_TASKS_DIR / "polycom_local" / "polycom_tiny_mc.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _independent_accuracy(model) -> float:
    """acc of the prompt 'Question: q\\nAnswer:' + ' ' + choice, scored by summed byte log-probs in fp64."""
    correct = 0
    docs = _tiny_mc_docs()
    for doc in docs:
        context = list(f"Question: {doc['question']}\nAnswer:".encode())
        scores = []
        for choice in doc["choices"]:
            cont = list(f" {choice}".encode())
            ids = torch.tensor([(context + cont)[:-1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            scores.append(sum(logp[len(context) - 1 + j, t].item() for j, t in enumerate(cont)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    return correct / len(docs)


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("lm") / "run", seed=3)


def test_local_task_accuracy_is_deterministic_and_matches_direct_scoring(run_and_model):
    folder, model = run_and_model
    first = evaluate(folder, tasks=["polycom_tiny_mc"])["tasks"]["polycom_tiny_mc"]
    second = evaluate(folder, tasks=["polycom_tiny_mc"], batch_size=3)["tasks"]["polycom_tiny_mc"]
    assert first["samples"] == 24
    assert first["acc"] == second["acc"] and first["acc_norm"] == second["acc_norm"]
    assert first["acc"] == pytest.approx(_independent_accuracy(model), abs=1e-12)


def test_exported_hf_folder_scores_like_the_run(run_and_model, tmp_path):
    from polycom.hf.export import export_run

    folder, _ = run_and_model
    hf = export_run(folder, tmp_path / "hf")
    from_run = evaluate(folder, tasks=["polycom_tiny_mc"])["tasks"]["polycom_tiny_mc"]
    from_hf = evaluate(hf, tasks=["polycom_tiny_mc"])["tasks"]["polycom_tiny_mc"]
    assert from_hf["acc"] == from_run["acc"] and from_hf["acc_norm"] == from_run["acc_norm"]


def test_lm_eval_by_registered_name(run_and_model):
    import lm_eval

    import polycom.eval.lm_eval_adapter  # noqa: F401  (registers "polycom")
    from polycom.eval.runner import task_manager

    folder, model = run_and_model
    out = lm_eval.simple_evaluate(
        model="polycom",
        model_args=f"pretrained={folder},batch_size=4",
        tasks=["polycom_tiny_mc"],
        task_manager=task_manager(with_defaults=False),
        log_samples=False,
    )
    assert out["results"]["polycom_tiny_mc"]["acc,none"] == pytest.approx(_independent_accuracy(model), abs=1e-12)


def test_paper_group_is_known_and_offline_failure_is_clear(run_and_model, monkeypatch):
    from polycom.eval.runner import PAPER_GROUP, PAPER_TASKS, resolve_tasks, task_manager

    tm = task_manager()
    assert PAPER_GROUP in tm.all_tasks
    assert all(task in tm.all_tasks for task in PAPER_TASKS)
    assert resolve_tasks([PAPER_GROUP])[0] == [PAPER_GROUP]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _ = run_and_model
    with pytest.raises(UserError, match="need their datasets from the Hugging Face hub"):
        evaluate(folder, tasks=["arc_easy"], limit=2)


def test_unknown_task_lists_suggestions(run_and_model):
    folder, _ = run_and_model
    with pytest.raises(UserError, match=r"unknown task 'polycom_tiny_mcq'.*did you mean: polycom_tiny_mc"):
        evaluate(folder, tasks=["polycom_tiny_mcq"])
    with pytest.raises(UserError, match="did you mean: .*hellaswag"):
        evaluate(load_eval_model(folder), tasks=["helaswag"])


class _Request:  # the one attribute of lm-eval's Instance the adapter reads
    def __init__(self, *args):
        self.args = args


def test_adapter_rolling_loglikelihood_and_greedy_generation(run_and_model):
    from polycom.eval import text_perplexity
    from polycom.eval.lm_eval_adapter import PolyComEvalLM

    folder, model = run_and_model
    lm = PolyComEvalLM(str(folder), batch_size=4)
    text = "All the world's a stage, and all the men and women merely players. " * 3  # > max_seq_len 128
    (rolling,) = lm.loglikelihood_rolling([_Request(text)])
    assert rolling == pytest.approx(-text_perplexity(lm.em, text)["nll"], rel=1e-9)

    prompt = "To be or"
    (generated,) = lm.generate_until([_Request(prompt, {"until": ["\x00never"], "max_gen_toks": 6})])
    expected = model.generate(torch.tensor([list(prompt.encode())]), 6, temperature=0)[0, len(prompt) :].tolist()
    assert generated == bytes(expected).decode("utf-8", errors="replace")


def test_cuda_request_without_cuda_falls_back_to_cpu(monkeypatch):
    from polycom.eval.lm_eval_adapter import _usable_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert _usable_device("cuda") == "cpu"
    assert _usable_device(None) == "cpu" and _usable_device("cpu") == "cpu"
