"""Log sources: CSV, JSONL, TensorBoard, directories, key detection (docs/CONTRACT.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios import loss_logs as S
from diffdiag.sources.logs import detect_keys, load_logs


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "tensorboard"])
@pytest.mark.parametrize("keyset", ["kohya", "diffusers", "onetrainer"])
def test_round_trip_and_keys(tmp_path, fmt, keyset):
    sc = S.nonfinite(400, 3, n_bad=2, keyset=keyset, batch_size=2)
    if fmt == "csv":
        path = S.write_csv(sc, tmp_path / "run" / "log.csv")
    elif fmt == "jsonl":
        path = S.write_jsonl(sc, tmp_path / "run" / "log.jsonl")
    else:
        path = S.write_tensorboard(sc, tmp_path / "run")
    log = load_logs(tmp_path / "run")
    k = sc.keys
    assert (log.loss_key, log.ema_key, log.lr_key, log.grad_norm_key) == (k["loss"], k["ema"], k["lr"], k["grad_norm"])
    np.testing.assert_array_equal(log.loss.steps, sc.steps)
    tol = 1e-6 if fmt == "tensorboard" else 1e-12  # TensorBoard stores float32
    fin = np.isfinite(sc.loss)
    np.testing.assert_allclose(log.loss.values[fin], sc.loss[fin], rtol=tol)
    np.testing.assert_array_equal(np.isnan(log.loss.values), np.isnan(sc.loss))  # non-finite kept as data
    np.testing.assert_array_equal(np.isposinf(log.loss.values), np.isposinf(sc.loss))
    if fmt != "tensorboard":
        assert log.sample_ids[7] == sc.sample_ids[7]
        np.testing.assert_array_equal(log.timesteps[7], sc.timesteps[7])
    assert log.sources and str(path.name if fmt != "tensorboard" else "tfevents") in log.sources[0]


def test_directory_merge_and_resume(tmp_path):
    sc = S.healthy(600, 2)
    a, b = S.healthy(600, 2), S.healthy(600, 2)
    S.write_csv(a, tmp_path / "part1" / "a.csv")
    b.steps = b.steps + 400  # a resumed run that overlaps steps 400..599
    b.loss = b.loss * 0 + 7.0
    S.write_jsonl(b, tmp_path / "part2" / "b.jsonl")
    log = load_logs(tmp_path)
    assert log.loss.steps[0] == 0 and log.loss.steps[-1] == 999 and len(log.loss) == 1000
    assert log.loss.values[450] == 7.0 and log.loss.values[10] == a.loss[10]
    assert len(log.sources) == 2


def test_csv_sparse_columns_and_row_index(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("loss,val_loss,learning_rate\n0.5,,0.001\n0.4,0.9,0.001\nnan,,0.001\ninf,,0.002\n")
    log = load_logs(p)
    assert log.loss_key == "loss" and log.lr_key == "learning_rate" and log.ema_key is None
    np.testing.assert_array_equal(log.loss.steps, [0, 1, 2, 3])
    assert np.isnan(log.loss.values[2]) and np.isinf(log.loss.values[3])
    np.testing.assert_array_equal(log.get("val_loss").steps, [1])  # empty cells are absent


def test_list_fields_split(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text('step,loss,sample_ids,timesteps\n0,0.1,a.png;b.png,10 20\n1,0.2,"c.png d.png",5;6\n')
    log = load_logs(p)
    assert log.sample_ids == {0: ["a.png", "b.png"], 1: ["c.png", "d.png"]}
    np.testing.assert_array_equal(log.timesteps[1], [5, 6])


def test_detect_keys_patterns_and_overrides():
    assert detect_keys(["train/loss", "lr/unet", "lr/te", "norm/avg_grad_norm"]) == {
        "loss": "train/loss", "ema": None, "lr": "lr/unet", "grad_norm": "norm/avg_grad_norm"}
    assert detect_keys(["loss/current", "loss/average", "lr/textencoder"])["ema"] == "loss/average"
    assert detect_keys(["my_loss", "val_loss"])["loss"] == "my_loss"
    assert detect_keys(["a", "b"], loss_key="b")["loss"] == "b"


@pytest.mark.parametrize("nan", [False, True])
def test_jsonl_fast_paths_match_line_reader(tmp_path, nan):
    """The column-wise JSONL readers (pyarrow without NaN literals, one json.loads call with them) give
    exactly what the line-by-line reader gives: sparse keys absent, null skipped, NaN kept as data."""
    from diffdiag.sources.logs import _read_jsonl_lines, read_jsonl

    sc = S.nonfinite(3000, 5, n_bad=3) if nan else S.healthy(3000, 5, batch_size=2)
    p = S.write_jsonl(sc, tmp_path / "l.jsonl")
    extra = '{"step": 3000, "loss": 0.5, "val_loss": 0.7, "note": "x", "lr": null}\n'
    with p.open("a") as fh:
        fh.write(extra)
    fast, slow = read_jsonl(p), _read_jsonl_lines(p)
    assert fast.scalars.keys() == slow.scalars.keys()
    for k in slow.scalars:
        np.testing.assert_array_equal(fast.scalars[k][0], slow.scalars[k][0])
        np.testing.assert_array_equal(fast.scalars[k][1], slow.scalars[k][1])
    np.testing.assert_array_equal(fast.scalars["val_loss"][0], [3000])
    assert fast.sample_ids == slow.sample_ids and fast.timesteps.keys() == slow.timesteps.keys()
    assert len(fast.scalars["lr"][0]) == 3000  # null: not logged at that step


def test_jsonl_bad_line_number_in_big_file(tmp_path):
    from diffdiag.errors import InputError

    p = S.write_jsonl(S.healthy(5000, 1, with_ids=False, with_timesteps=False), tmp_path / "l.jsonl", lists=False)
    lines = p.read_text().splitlines()
    lines[4321] = lines[4321][:-5]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line 4322 is not valid JSON"):
        load_logs(p)


def test_trainer_config_beside_logs(tmp_path):
    """kohya-style TOML (optimizer_args "k=v" strings) one level above the log file, a diffusers args.json
    beside it: flattened into RunLog.config with the canonical names the causes read."""
    import json

    S.write_csv(S.healthy(300, 1), tmp_path / "logs" / "log.csv")
    (tmp_path / "logs" / "args.json").write_text(json.dumps({"adam_weight_decay": 0.02, "train_batch_size": 4,
                                                             "mixed_precision": "bf16"}))
    (tmp_path / "config.toml").write_text('learning_rate = "1e-4"\nnetwork_dropout = 0.1\n'
                                          'optimizer_args = ["weight_decay=0.05"]\n[model]\nname = "sdxl"\n')
    cfg = load_logs(tmp_path).config
    assert cfg["learning_rate"] == 1e-4 and cfg["network_dropout"] == 0.1 and cfg["dropout"] == 0.1
    assert cfg["weight_decay"] == 0.05  # the TOML's optimizer_args win over the nested args' adam_weight_decay
    assert cfg["adam_weight_decay"] == 0.02 and cfg["train_batch_size"] == 4 and cfg["model/name"] == "sdxl"
    assert load_logs(tmp_path / "logs" / "log.csv").config["weight_decay"] == 0.02  # only args.json beside it
    (tmp_path / "logs" / "args.json").write_text("{not json")
    assert "adam_weight_decay" not in load_logs(tmp_path / "logs").config  # unreadable config: skipped


def test_tensorboard_hparams_into_config(tmp_path):
    """Hyper-parameters written with torch's SummaryWriter.add_hparams (TensorBoard HParams plugin)."""
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for i in range(50):
        w.add_scalar("train_loss", 0.1 + 0.01 * (i % 3), i)
    w.add_hparams({"learning_rate": 2e-4, "adam_weight_decay": 0.01, "optimizer": "adamw"}, {"hparam/x": 0.1},
                  run_name=".")
    w.close()
    log = load_logs(tmp_path)
    assert log.loss_key == "train_loss" and len(log.loss) == 50
    assert log.config == {"learning_rate": 2e-4, "adam_weight_decay": 0.01, "optimizer": "adamw",
                          "weight_decay": 0.01}
