"""Greedy soups and the evolutionary merge search, on fine-tunes that each learned a different
text: both must find a merge that beats every single model on a held-out mix of the texts. The
search must also resume exactly where it stopped, and check its template before any merge."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from hubbot.cli import main
from hubbot.errors import Cancelled, RecipeError
from hubbot.hub import HubOptions
from hubbot.merge.plan import build
from hubbot.merge.publish import merge_and_push
from hubbot.recipe.merge import parse
from hubbot.recipe.request import soup_recipe
from hubbot.search import evolve
from hubbot.search.evaluate import Evaluator, load_texts
from hubbot.search.history import FILE_NAME, SearchHistory, SearchProgress
from hubbot.search.soup import greedy_soup
from tests.hub_fixtures import ALICE_TOKEN
from tests.models import load_state


@pytest.fixture(scope="module")
def scores(trained):
    """Each single model's perplexity on the held-out mix."""
    evaluator = Evaluator(load_texts(str(trained.heldout)))
    models = {"base": trained.base, **trained.tunes}
    return evaluator, {name: evaluator(folder) for name, folder in models.items()}


def test_greedy_soup_beats_every_single_model(trained, scores, tmp_path):
    evaluator, single = scores
    candidates = [str(trained.tunes["arithmetic"]), str(trained.base), str(trained.tunes["animals"])]
    progress: list[SearchProgress] = []
    result = greedy_soup(candidates, evaluator, tmp_path / "soup", work_dir=tmp_path, report=progress.append)
    assert result.score < min(single.values())
    assert evaluator(result.folder) == pytest.approx(result.score, rel=1e-4)
    assert result.ingredients[0] == str(trained.tunes["animals"])  # the best single model starts the soup
    assert len(result.ingredients) >= 2
    recipe = parse((result.folder / "mergekit_config.yml").read_text())
    assert [str(m.model) for m in recipe.models] == result.ingredients
    history = SearchHistory.from_json(json.loads((result.folder / FILE_NAME).read_text()))
    assert history.best.params["ingredients"] == result.ingredients and len(history.trials) == 5
    assert "| kept |" in history.markdown()
    assert [p.evaluation for p in progress] == [1, 2, 3, 4, 5] and progress[-1].budget == 5
    assert progress[-1].best_score == result.score and progress[-1].best_recipe == soup_recipe(result.ingredients)
    assert "kept" in str(progress[-1]) or "left out" in str(progress[-1])
    assert [p.name for p in tmp_path.iterdir()] == ["soup"], "candidate soups must be cleaned up"
    card = ModelCard.load(result.folder / "README.md")
    assert "## How this recipe was found" in card.text and "### Greedy soup" in card.text
    assert card.data.eval_results[0].metric_value == pytest.approx(result.score, rel=1e-3)


def test_search_beats_every_single_model(trained, scores, tmp_path):
    evaluator, single = scores
    template = f"""merge_method: task_arithmetic
base_model: {trained.base}
models:
  - model: {trained.tunes['animals']}
    parameters: {{weight: {{search: [0, 1.5], init: 0.1}}}}
  - model: {trained.tunes['arithmetic']}
    parameters: {{weight: {{search: [0, 1.5], init: 0.1}}}}
"""
    progress: list[SearchProgress] = []
    result = evolve.search(template, evaluator, tmp_path / "out", budget=12, work_dir=tmp_path / "work",
                           report=progress.append)
    assert result.score < min(single.values())
    assert progress[0].score > result.score, "the search must improve on where it started"
    assert [p.evaluation for p in progress] == list(range(1, 13))
    assert progress[-1].best_score == result.score and "task_arithmetic" in progress[-1].best_recipe
    assert evaluator(result.folder) == pytest.approx(result.score, rel=1e-4)
    recipe = (result.folder / "mergekit_config.yml").read_text()
    assert recipe.startswith("# Found by CMA-ES merge search") and "search:" not in recipe
    history = json.loads((result.folder / FILE_NAME).read_text())
    assert history["kind"] == "cma_es" and len(history["trials"]) == 12 and history["budget"] == 12
    assert not (tmp_path / "work" / "candidate").exists()
    assert "### Evolutionary merge search" in (result.folder / "README.md").read_text()


def test_a_winner_is_published_with_its_history(hub, trained, scores, tmp_path):
    """The job path: search without an output folder, then publish the winner with its history."""
    evaluator, _ = scores
    result = greedy_soup([str(trained.tunes["animals"]), str(trained.tunes["arithmetic"])], evaluator, None,
                         work_dir=tmp_path)
    assert result.folder is None and list(tmp_path.iterdir()) == []
    plan = build(parse(result.recipe))
    pub = merge_and_push(plan, tmp_path / "w", "alice/soup", HubOptions(token=ALICE_TOKEN),
                         annotate=result.history.annotate)
    files = hub.repo_files("alice/soup")
    assert "search_history.json" in files and pub.url.endswith("alice/soup")
    card = files["README.md"].decode()
    assert "## How this recipe was found" in card and "model-index" in card


class Distance:
    """A fast stand-in for an evaluator: how far a merge's weights are from a target."""

    metric = "distance"

    def __init__(self, target: dict[str, torch.Tensor]):
        self.target = target

    def __call__(self, folder: Path) -> float:
        state = load_state(folder)
        return float(sum((state[k].float() - v).norm() for k, v in self.target.items()))

    def describe(self) -> dict:
        return {"name": "distance to a target merge"}


def test_search_resumes_exactly_after_a_cancel(families, tmp_path):
    _, ft1, ft2 = families("llama_f32")
    a, b = load_state(ft1), load_state(ft2)
    scorer = Distance({k: 0.3 * a[k] + 0.6 * b[k] for k in a})
    template = f"""merge_method: linear
models:
  - {{model: {ft1}, parameters: {{weight: {{search: [0, 1]}}}}}}
  - {{model: {ft2}, parameters: {{weight: {{search: [0, 1], points: 2}}}}}}
parameters: {{normalize: false}}
"""
    straight = evolve.search(template, scorer, tmp_path / "a", budget=14, work_dir=tmp_path / "wa", popsize=5)

    cancel = threading.Event()

    def stop_after_six(p: SearchProgress) -> None:
        if p.evaluation == 6:
            cancel.set()

    with pytest.raises(Cancelled, match="resume"):
        evolve.search(template, scorer, tmp_path / "b", budget=14, work_dir=tmp_path / "wb", popsize=5,
                      report=stop_after_six, cancel=cancel)
    assert not (tmp_path / "b").exists()
    evolve.search(template, scorer, tmp_path / "b", budget=9, work_dir=tmp_path / "wb", popsize=5)
    resumed = evolve.search(template, scorer, tmp_path / "c", budget=14, work_dir=tmp_path / "wb", popsize=5)
    assert [(t.params, t.score) for t in resumed.history.trials] == [(t.params, t.score) for t in straight.history.trials]
    assert resumed.recipe == straight.recipe
    with pytest.raises(Exception, match="another template or options"):
        evolve.search(template, scorer, tmp_path / "d", budget=14, work_dir=tmp_path / "wb", popsize=6)


def test_templates_are_checked_before_any_merge(families, tmp_path):
    base, ft1, ft2 = families("llama")
    with pytest.raises(RecipeError) as err:
        evolve.Template("merge_method: ties\nmodels:\n"
                        "  - {model: a, parameters: {weight: {search: [1, 0]}, density: {search: [0, 1], pts: 2}}}\n"
                        "  - {model: b, parameters: {weight: {search: [0, 1], points: 2, init: [0.5]}}}\n")
    text = "\n".join(err.value.problems)
    assert "models[0].parameters.weight.search: expected [low, high] with low < high" in text
    assert "models[0].parameters.density: unknown field 'pts'" in text
    assert "models[1].parameters.weight.init: expected 2 number(s)" in text
    with pytest.raises(RecipeError, match="nothing to search"):
        evolve.Template("merge_method: linear\nmodels: [a, b]\n")
    tpl = evolve.Template(f"merge_method: ties\nbase_model: {base}\nmodels:\n"
                          f"  - {{model: {ft1}, parameters: {{weight: 1, density: {{search: [0.5, 1.5]}}}}}}\n"
                          f"  - {{model: {ft2}, parameters: {{weight: 1, density: 0.5}}}}\n")
    assert tpl.values([0.25]) == {"models[0].parameters.density": 0.75}
    with pytest.raises(RecipeError, match="at the highest values of the search ranges: .*density"):
        evolve.search(tpl, Distance({}), tmp_path / "out", budget=2, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_cli_soup_and_evolve(trained, tmp_path, capsys):
    heldout = str(trained.heldout)
    assert main(["soup", "--candidates", str(trained.tunes["animals"]), str(trained.tunes["arithmetic"]),
                 "--eval", heldout, "--out", str(tmp_path / "soup")]) == 0
    assert "soup of" in capsys.readouterr().out
    template = tmp_path / "template.yml"
    template.write_text(f"merge_method: linear\nmodels:\n"
                        f"  - {{model: {trained.tunes['animals']}, parameters: {{weight: {{search: [0, 1]}}}}}}\n"
                        f"  - {{model: {trained.tunes['arithmetic']}, parameters: {{weight: 0.5}}}}\n")
    assert main(["evolve", str(template), "--eval", heldout, "--budget", "3", "--out", str(tmp_path / "evo")]) == 0
    out = capsys.readouterr().out
    assert "[3/3]" in out and "best perplexity" in out
    assert (tmp_path / "evo.search" / evolve.STATE_FILE).exists() and (tmp_path / "evo" / FILE_NAME).exists()
