"""Mixtures of experts, greedy soups and merge searches as jobs: submitted as YAML texts like
recipes, checked at submission, run by worker processes, with the search's progress in the
job's log and its history in the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubbot.errors import RecipeError
from hubbot.jobs.service import Service
from hubbot.recipe.kinds import parse_any
from hubbot.recipe.request import parse_request
from tests.jobkit import make_settings
from tests.test_jobs import run_all


def soup_request(trained) -> str:
    return (f"soup: [{trained.tunes['animals']}, {trained.tunes['arithmetic']}]\n"
            f"eval: {{data: {trained.heldout}}}\n")


def search_request(trained, budget: int) -> str:
    return f"""evolve:
  budget: {budget}
  popsize: 4
  recipe:
    merge_method: linear
    models:
      - {{model: {trained.tunes['animals']}, parameters: {{weight: {{search: [0.1, 1]}}}}}}
      - {{model: {trained.tunes['arithmetic']}, parameters: {{weight: {{search: [0.1, 1]}}}}}}
eval:
  data: {trained.heldout}
  max_documents: 40
"""


def test_requests_are_checked_like_recipes(trained, families):
    with pytest.raises(RecipeError) as err:
        parse_request("soup: [org/a]\neval: {data: x.txt, max_length: 0, extra: 1}\n")
    text = "\n".join(err.value.problems)
    assert "soup: expected a list of at least two" in text and "eval.max_length" in text and "eval.extra" in text
    with pytest.raises(RecipeError, match="evolve.budget: missing"):
        parse_request("evolve: {recipe: {merge_method: linear, models: [{model: org/a, parameters: "
                      "{weight: {search: [0, 1]}}}]}}\neval: {data: x.txt}\n")
    with pytest.raises(RecipeError, match="evolve.recipe: the template has nothing to search"):
        parse_request("evolve: {budget: 3, recipe: {merge_method: linear, models: [org/a]}}\neval: {data: x.txt}\n")
    with pytest.raises(RecipeError, match="local path"):
        parse_request(soup_request(trained), allow_local=False)
    request = parse_any(search_request(trained, 3))
    assert request.kind == "evolve" and request.budget == 3 and request.eval.max_documents == 40
    assert [str(r) for r in request.model_refs()] == [str(trained.tunes["animals"]), str(trained.tunes["arithmetic"])]


def test_moe_soup_and_search_run_as_jobs(families, trained, tmp_path):
    base, ft1, ft2 = families("llama")
    moe = f"base_model: {base}\ngate_mode: random\nexperts: [{{source_model: {ft1}}}, {{source_model: {ft2}}}]\n"
    svc = Service(make_settings(tmp_path))
    try:
        for text in (moe, soup_request(trained), search_request(trained, 3)):
            v = svc.validate(text)
            assert v.ok, v.problems
            assert all("router" not in m["ref"] for m in v.models)
        jobs = [svc.submit(text) for text in (moe, soup_request(trained), search_request(trained, 3))]
        run_all(svc, timeout=240)
        moe_job, soup_job, search_job = (svc.get(j.id) for j in jobs)
        for job in (moe_job, soup_job, search_job):
            assert job.state == "done", (job.error, svc.log(job.id))
        cfg = json.loads((Path(moe_job.result["folder"]) / "config.json").read_text())
        assert cfg["architectures"] == ["MixtralForCausalLM"]
        assert (Path(moe_job.result["folder"]) / "mergekit_moe_config.yml").exists()

        soup = Path(soup_job.result["folder"])
        assert (soup / "search_history.json").exists() and "How this recipe was found" in (soup / "README.md").read_text()
        log = svc.log(search_job.id)
        assert any("[3/3]" in line for line in log) and any("winner (perplexity" in line for line in log)
        history = json.loads((Path(search_job.result["folder"]) / "search_history.json").read_text())
        assert history["kind"] == "cma_es" and len(history["trials"]) == 3
        assert svc.submit(search_request(trained, 3)).id == search_job.id, "the same request is the same job"
    finally:
        svc.close()


def test_the_space_shows_a_search_while_it_runs():
    from hubbot.app import views
    from tests.test_recipe_form import _job

    progress = {"evaluations_done": 3, "evaluations_total": 12, "metric": "perplexity", "best_score": 2.0159,
                "best_recipe": "merge_method: linear\n<models>\n"}
    html = views.job_html(_job(recipe="evolve: {budget: 12}\n", progress=progress))
    assert "3 / 12" in html and "width:25.0%" in html and "perplexity 2.016" in html
    assert "&lt;models&gt;" in html, "the recipe is escaped"
    rows = views.jobs_rows([_job(recipe="soup: [a, b]\n"), _job(recipe="base_model: a\nexperts: []\n")])
    assert [r[2] for r in rows] == ["greedy soup", "moe"]
