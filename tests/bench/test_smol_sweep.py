"""The smol_train suite's sweep rule (bench/suites/smol_train.py), without a model: the lrs run from the
highest down, each but the seed's own given up once it cannot be the best, and the best picked by time to
n/n, else by final recall. The suite itself runs on smol (`python -m bench --quick --only smol_train`)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def suite(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is a folder of the repository, not an installed package
    from bench.suites import smol_train

    return smol_train


def fake(outcomes: dict):
    """run(lr, give_up) from {lr: (reached, seconds)}, recording what each lr was given."""
    given = {}

    def run(lr, give_up):
        given[lr] = give_up
        reached, seconds = outcomes[lr]
        cut = not reached and give_up is not None and seconds > give_up
        return dict(reached=reached, steps=10 if reached else None, seconds=min(seconds, give_up) if cut else seconds,
                    cut_off=cut, recall_checks=[[10, 10 if reached else int(seconds) % 10]])

    return run, given


def test_highest_lr_first_the_others_given_up_past_the_best_time_but_never_the_seeds(suite):
    run, given = fake({5e-3: (False, 90), 1e-3: (True, 40), 5e-4: (True, 30), 2e-4: (False, 99), 1e-4: (False, 95)})
    done = suite.sweep(run, (1e-4, 2e-4, 5e-4, 1e-3, 5e-3), 1e-4)
    assert list(done) == [5e-3, 1e-3, 5e-4, 2e-4, 1e-4]
    assert given == {5e-3: None, 1e-3: None, 5e-4: 40, 2e-4: 30, 1e-4: None}
    assert done[2e-4]["cut_off"] and not done[1e-4]["cut_off"]
    assert suite.best_lr(done) == 5e-4
    assert suite.ended(done[2e-4], 10, 400).startswith("cut off at 30") and suite.ended(done[5e-4], 10, 400) == "10/10 at step 10"


def test_where_none_gets_there_the_best_is_the_highest_final_recall_then_the_least_time(suite):
    done = {1e-4: dict(reached=False, seconds=50, recall_checks=[[10, 3]]),
            5e-3: dict(reached=False, seconds=60, recall_checks=[[10, 7]]),
            1e-3: dict(reached=False, seconds=55, recall_checks=[[10, 7]])}
    assert suite.best_lr(done) == 1e-3
    assert suite.sweep(fake({1e-4: (False, 9)})[0], (), 1e-4).keys() == {1e-4}  # the seed's lr always runs
    assert suite.ratio(None, 3.0) is None and suite.ratio(9.0, 3.0) == 3.0
