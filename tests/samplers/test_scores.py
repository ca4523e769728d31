"""The shared score table: deferred checks, latest-wins settling, checkpoints, seeding."""

import numpy as np
import pytest
import torch

from winnow.samplers import InfoBatchSampler, ScoreTable


def test_feedback_is_deferred_until_flush_and_latest_wins():
    t = ScoreTable(6, initial=3.0)
    t.update(torch.tensor([1, 2]), torch.tensor([0.5, 0.25]))
    t.update(np.array([2, 5], dtype=np.int32), np.array([9.0, 1.0]))
    assert t.num_pending == 4
    np.testing.assert_array_equal(t.values, [3.0] * 6)  # the snapshot does not move
    assert t.flush() == 4
    np.testing.assert_array_equal(t.values, [3, 0.5, 9, 3, 3, 1])
    np.testing.assert_array_equal(t.seen, [0, 1, 1, 0, 0, 1])
    assert t.num_pending == 0 and t.flush() == 0


def test_latest_wins_across_many_compacted_updates():
    t = ScoreTable(10)
    for step in range(300):  # enough steps to trigger the pending-list compaction
        t.update(torch.tensor([step % 10]), torch.tensor([float(step)], dtype=torch.bfloat16))
    t.flush()
    expected = [float(torch.tensor(290.0 + i, dtype=torch.bfloat16)) for i in range(10)]
    np.testing.assert_array_equal(t.values, expected)


@pytest.mark.parametrize(
    ("ids", "losses", "match"),
    [
        (torch.tensor([0, 1]), torch.tensor([0.1, float("nan")]), "finite"),
        (torch.tensor([0, 1]), torch.tensor([0.1, float("inf")]), "finite"),
        (torch.tensor([0, 6]), torch.tensor([0.1, 0.2]), r"in \[0, 6\); got \[6\]"),
        (torch.tensor([-1, 2]), torch.tensor([0.1, 0.2]), r"got \[-1\]"),
    ],
)
def test_bad_values_are_rejected_at_flush_and_leave_the_table_untouched(ids, losses, match):
    """Values an accelerator holds are checked at settle time (no sync per step); ids are
    recorded unchecked here, as ids that live on a device would be."""
    t = ScoreTable(6, initial=2.0)
    t.update(torch.tensor([3]), torch.tensor([1.0]))
    t.record_checked(ids, losses)
    with pytest.raises(ValueError, match=match):
        t.flush()
    np.testing.assert_array_equal(t.values, [2.0] * 6)
    assert t.num_pending == 3  # nothing lost: the caller decides
    t.discard_pending()
    assert t.flush() == 0


def test_cpu_ids_out_of_range_are_rejected_at_once_and_not_recorded():
    t = ScoreTable(6)
    for ids in (torch.tensor([0, 6]), np.array([-1, 2])):
        with pytest.raises(ValueError, match=r"ids must be in \[0, 6\)"):
            t.update(ids, torch.tensor([0.1, 0.2]))
    assert t.num_pending == 0


def test_bad_shapes_are_rejected_at_once():
    t = ScoreTable(4)
    with pytest.raises(ValueError, match="scalar .already reduced"):
        t.update(torch.tensor([0]), torch.tensor(0.3))
    with pytest.raises(ValueError, match="2 entries but losses has 3"):
        t.update(torch.tensor([0, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        t.update(torch.tensor([0, 1]), torch.zeros(2, 1))
    with pytest.raises(TypeError, match="integer"):
        t.update(torch.tensor([0.0, 1.0]), torch.zeros(2))
    with pytest.raises(TypeError, match="floating"):
        t.update(torch.tensor([0, 1]), torch.tensor([1, 2]))
    s = InfoBatchSampler(4, num_epochs=2)
    with pytest.raises(ValueError, match="already reduced"):
        s.reweight(torch.tensor([0]), torch.tensor(0.3))
    assert t.num_pending == 0 and s.scores.num_pending == 0


def test_state_round_trip_keeps_pending_feedback():
    t = ScoreTable(5, initial=1.0)
    t.update(torch.tensor([0, 4]), torch.tensor([0.2, 0.4]))
    t.flush()
    t.update(torch.tensor([1]), torch.tensor([0.7]))
    state = t.state_dict()
    u = ScoreTable(5)
    u.load_state_dict(state)
    np.testing.assert_array_equal(u.values, t.values)
    assert u.num_pending == 1
    u.flush()
    np.testing.assert_allclose(u.values, [0.2, 0.7, 1.0, 1.0, 0.4])
    with pytest.raises(ValueError, match="num_examples: stored 5, here 6"):
        ScoreTable(6).load_state_dict(state)


def test_seed_from_a_stored_run(tmp_path):
    from winnow.store import ScoreStore

    store = ScoreStore(tmp_path / "store")
    store.write("warmup", "loss", np.array([0, 2, 3]), np.array([0.5, 2.5, 0.1]))
    values, present = store.read("warmup", "loss", num_examples=5)
    t = ScoreTable(5, initial=3.0)
    t.seed(values)
    np.testing.assert_allclose(t.values, [0.5, 3.0, 2.5, 0.1, 3.0])
    np.testing.assert_array_equal(t.seen, present)
    t.seed([9.0], ids=[1])
    assert t.values[1] == 9.0
    with pytest.raises(ValueError, match="values has 2 entries but the table has 5"):
        t.seed([1.0, 2.0])
    with pytest.raises(ValueError, match="ids must be in"):
        t.seed([1.0], ids=[5])
