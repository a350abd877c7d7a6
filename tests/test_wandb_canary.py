"""Canary: the parts of wandb's ``.wandb`` format that diffdiag's reader relies on.

If a wandb upgrade changes any of these (file header, chunk framing, protobuf field
numbers, how history items are written), this module fails loudly and names the field,
instead of the reader silently reading less.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from diffdiag.integrations import wandb_records as W  # noqa: E402

from .wandb_util import finish_synced, isolated_wandb  # noqa: E402


def _fields(msg) -> dict[str, int]:
    return {f.name: f.number for f in msg.DESCRIPTOR.fields}


def test_protobuf_field_numbers_the_reader_uses():
    from wandb.proto import wandb_internal_pb2 as pb

    rec = _fields(pb.Record)
    assert {k: rec[k] for k in ("num", "history", "summary", "config", "stats", "artifact", "alert", "output_raw",
                                "run", "exit")} == {
        "num": 1, "history": 2, "summary": 3, "config": 5, "stats": 7, "artifact": 8, "alert": 10,
        "output_raw": 13, "run": 17, "exit": 18}
    assert pb.Record.DESCRIPTOR.fields_by_name["num"].type == 3  # int64 varint: skipped by hand
    assert _fields(pb.HistoryRecord)["item"] == 1 and _fields(pb.HistoryRecord)["step"] == 2
    assert _fields(pb.HistoryStep)["num"] == 1
    item = _fields(pb.HistoryItem)
    assert (item["key"], item["nested_key"], item["value_json"]) == (1, 2, 16)
    # typed values (handled when value_json is empty)
    assert {"none", "boolean", "integer", "number", "text", "json"} <= set(item)
    assert [o.name for o in pb.HistoryItem.DESCRIPTOR.oneofs] == ["value"]
    for m in (pb.SummaryRecord, pb.ConfigRecord):
        f = _fields(m)
        assert (f["update"], f["remove"]) == (1, 2)
    for m in (pb.SummaryItem, pb.ConfigItem):
        f = _fields(m)
        assert (f["key"], f["nested_key"], f["value_json"]) == (1, 2, 16)
    run = _fields(pb.RunRecord)
    assert {k: run[k] for k in ("run_id", "entity", "project", "config", "run_group", "job_type", "display_name",
                                "tags")} == {"run_id": 1, "entity": 2, "project": 3, "config": 4, "run_group": 6,
                                             "job_type": 7, "display_name": 8, "tags": 10}
    art = _fields(pb.ArtifactRecord)
    assert {"type", "name", "digest", "metadata", "aliases", "manifest"} <= set(art)
    assert {"path", "digest", "size", "local_path", "ref"} <= set(_fields(pb.ArtifactManifestEntry))
    assert {"title", "text", "level"} <= set(_fields(pb.AlertRecord))


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    with isolated_wandb({"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "data"),
                         "WANDB_CACHE_DIR": str(root / "cache"), "WANDB_CONFIG_DIR": str(root / "config")}):
        run = wandb.init(project="canary", dir=str(root), id="canary1", config={"a": {"b": 2}},
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        for s in range(30):
            row = {"loss": 1.0 / (s + 1), "flag": s % 2 == 0}
            if s == 5:
                row["img"] = wandb.Image(np.zeros((8, 8, 3), dtype=np.uint8))
                row["note"] = "x" * 50_000  # longer than a 32 KiB block: FIRST/MIDDLE/LAST chunks
            run.log(row, step=10 * s)
        yield finish_synced(run)


def test_file_header_and_framing(canary_run):
    data = canary_run.read_bytes()
    ident, magic, version = struct.unpack_from("<4sHB", data, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    rec = W.read_wandb_file(canary_run)
    assert rec.version == 0 and rec.dropped_bytes == 0
    assert rec.chunk_types.get(W.FIRST, 0) >= 1 and rec.chunk_types.get(W.LAST, 0) == rec.chunk_types[W.FIRST]
    assert rec.other["note"] == [(50, "x" * 50_000)]  # the record split over blocks came back whole


def test_history_items_take_the_fast_path(canary_run):
    """History rows are written as ``num`` then ``history``, items as nested_key + value_json."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, _, _ = W.split_records(canary_run.read_bytes())
    hist = []
    for payload in raw:
        r = pb.Record()
        r.ParseFromString(payload)
        if r.WhichOneof("record_type") == "history":
            hist.append((payload, r))
    assert len(hist) == 30
    for payload, r in hist:
        assert payload[0] == W._TAG_NUM  # record number first ...
        i = 1
        while payload[i] & 0x80:
            i += 1
        assert payload[i + 1] == W._TAG_HISTORY  # ... then the history field
        for item in r.history.item:
            assert item.value_json and not item.key and len(item.nested_key) >= 1
            assert item.WhichOneof("value") is None
    rec = W.read_wandb_file(canary_run)
    steps, values = rec.scalars["loss"]
    assert steps.tolist() == [10 * s for s in range(30)]
    np.testing.assert_array_equal(values, [1.0 / (s + 1) for s in range(30)])
    assert rec.scalars["flag"][1].tolist() == [float(s % 2 == 0) for s in range(30)]
    # only the image's nested keys (img/_type, img/path, ...) and the long note miss the fast path
    img = [m for m in rec.media if m.key == "img"]
    assert len(img) == 1 and img[0].step == 50 and img[0].kind == "image-file"
    assert img[0].path.startswith("media/images/") and (canary_run.parent / "files" / img[0].path).exists()
    assert 0 < rec.slow_items <= 12
    assert rec.config == {"a": {"b": 2}}
    assert rec.summary["loss"] == pytest.approx(1.0 / 30)
