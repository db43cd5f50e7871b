"""Resume for the embedding encoders (autoencoder, deepcluster and dec have theirs in their own test files):
interrupted after epoch e then resumed equals the uninterrupted run; more epochs continue; a normal run can
be resumed (the fingerprint leaves out ``resume``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imclust.data.sources import _array_imageset
from imclust.encoders.embedding import EmbeddingEncoder, SelfLabelEncoder
from imclust.errors import UserError

from conftest import blobs_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ds():
    X, y = blobs_images(n_per=20, k=3, size=8)
    return _array_imageset(X, y, "blobs", "array"), y


def _fit(cls, ds, y, **kw):
    base = dict(dim=4, net="mlp", batch_size=16, seed=0, device="cpu", checkpoint_every=1)
    if cls is SelfLabelEncoder:
        return cls(n_clusters=3, **{**base, **kw}).fit(ds)
    return cls(head="arcface", margin_warmup=2, **{**base, **kw}).fit(ds, y)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("cls", [EmbeddingEncoder, SelfLabelEncoder])
def test_resumed_run_equals_uninterrupted_and_longer_runs_continue(cls, tmp_path, monkeypatch):
    ds, y = _ds()
    full = _fit(cls, ds, y, epochs=4, checkpoint_dir=str(tmp_path / "full"))
    ck = str(tmp_path / "ck")
    start = cls.on_epoch_start

    def stop_at_third_epoch(self, trainer, epoch):
        if epoch == 2:
            raise Interrupted  # as a killed process: epochs 1 and 2 are checkpointed
        return start(self, trainer, epoch)

    monkeypatch.setattr(cls, "on_epoch_start", stop_at_third_epoch)
    with pytest.raises(Interrupted):
        _fit(cls, ds, y, epochs=4, checkpoint_dir=ck)  # a normal run (resume not set), interrupted
    monkeypatch.undo()
    resumed = _fit(cls, ds, y, epochs=4, checkpoint_dir=ck, resume=True)
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in full.history_]
    for (k, a), b in zip(full.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), k
    np.testing.assert_array_equal(resumed.transform(ds), full.transform(ds))
    if cls is SelfLabelEncoder:  # the pseudo-labels came back with the checkpoint
        assert resumed.history_[2]["nmi_prev"] == full.history_[2]["nmi_prev"]
        np.testing.assert_array_equal(resumed.labels_, full.labels_)
    # the cosine schedule is stretched over the new length: a longer resume continues instead of failing
    longer = _fit(cls, ds, y, epochs=6, checkpoint_dir=ck, resume=True)
    assert len(longer.history_) == 6 and longer.history_[:4] == resumed.history_
    with pytest.raises(UserError, match="configuration changed"):
        _fit(cls, ds, y, epochs=7, checkpoint_dir=ck, resume=True, dim=5)
