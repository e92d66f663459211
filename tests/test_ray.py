"""Soups and the merge search fanned out over a real local Ray instance (2 CPUs): the same seed
gives the same candidates, scores and winner as the serial run, both CPUs take candidates, and a
search started serially resumes on the cluster where it stopped."""

from __future__ import annotations

import json

import pytest

from hubbot.search import evolve
from hubbot.search.evaluate import Evaluator, load_texts
from hubbot.search.fanout import RayFanout
from hubbot.search.soup import greedy_soup

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_an_unreachable_cluster_is_a_clear_error_within_seconds():
    """Runs before the module's cluster starts: nothing listens on port 1."""
    from hubbot.errors import HubbotError

    assert not ray.is_initialized()
    with pytest.raises(HubbotError, match="could not reach the Ray cluster at '127.0.0.1:1'"):
        RayFanout("127.0.0.1:1", object())


def _template(trained) -> str:
    return f"""merge_method: task_arithmetic
base_model: {trained.base}
models:
  - model: {trained.tunes['animals']}
    parameters: {{weight: {{search: [0, 1.5], init: 0.1}}}}
  - model: {trained.tunes['arithmetic']}
    parameters: {{weight: {{search: [0, 1.5], init: 0.1}}}}
"""


def _trials(work) -> list[tuple]:
    state = json.loads((work / evolve.STATE_FILE).read_text())
    return [(tuple(x), s, e) for g in state["generations"] for x, s, e in zip(g["asked"], g["scores"], g["errors"])]


def test_search_on_ray_is_the_serial_search(cluster, trained, tmp_path):
    evaluator = Evaluator(load_texts(str(trained.heldout)))
    serial = evolve.search(_template(trained), evaluator, None, budget=8, popsize=4, seed=3,
                           work_dir=tmp_path / "serial")
    fanout = RayFanout("auto", evaluator)
    spread = evolve.search(_template(trained), evaluator, None, budget=8, popsize=4, seed=3,
                           work_dir=tmp_path / "ray", fanout=fanout)
    assert _trials(tmp_path / "ray") == _trials(tmp_path / "serial")
    assert spread.recipe.splitlines()[2:] == serial.recipe.splitlines()[2:] and spread.score == serial.score
    assert len(fanout.workers) == 2, f"both CPUs should take candidates, saw {fanout.workers}"
    assert not any(p.name == "candidate" for p in (tmp_path / "ray").iterdir())


def test_a_serial_search_resumes_on_ray(cluster, trained, tmp_path):
    evaluator = Evaluator(load_texts(str(trained.heldout)))
    evolve.search(_template(trained), evaluator, None, budget=6, popsize=4, seed=5, work_dir=tmp_path / "work")
    resumed = evolve.search(_template(trained), evaluator, None, budget=10, popsize=4, seed=5,
                            work_dir=tmp_path / "work", fanout=RayFanout("auto", evaluator))
    straight = evolve.search(_template(trained), evaluator, None, budget=10, popsize=4, seed=5,
                             work_dir=tmp_path / "straight")
    assert _trials(tmp_path / "work") == _trials(tmp_path / "straight")
    assert resumed.score == straight.score and len(resumed.history.trials) == 10


def test_soup_on_ray_is_the_serial_soup(cluster, trained, tmp_path):
    evaluator = Evaluator(load_texts(str(trained.heldout)))
    candidates = [str(trained.tunes["arithmetic"]), str(trained.base), str(trained.tunes["animals"])]
    serial = greedy_soup(candidates, evaluator, None, work_dir=tmp_path / "a")
    spread = greedy_soup(candidates, evaluator, None, work_dir=tmp_path / "b", fanout=RayFanout("auto", evaluator))
    assert spread.ingredients == serial.ingredients and spread.score == serial.score
    assert [t.score for t in spread.history.trials] == [t.score for t in serial.history.trials]
