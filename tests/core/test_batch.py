"""The batch command on the tiny model: a manifest of 6 rows, one of them a corrupt image, gives 5 videos whose frames
are animate()'s for the same row and 1 recorded failure, embedded and on Ray; a stopped run resumes without touching
what was made; a bad row is refused with its line number before any model is loaded."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dynamicrafter_core import batch
from dynamicrafter_core.__main__ import main
from dynamicrafter_core.batch import ModelSpec, Settings, read_rows, run_batch
from dynamicrafter_core.pipeline import animate, load_image
from dynamicrafter_core.video_io import to_uint8

from ..conftest import CHECKPOINT, CONFIG_FILE

SETTINGS = Settings(steps=2, frames=3, format="png")  # png: lossless frames, compared exactly
SPEC = ModelSpec(CHECKPOINT, CONFIG_FILE)
ROWS = [  # (image, prompt, seed); the fourth is not an image
    ("red.png", "a red square", 1), ("blue.png", "", 2), ("noise.png", "static", 3), ("broken.png", "never", 4),
    ("red.png", "a red square", 5), ("grey.png", "fog", 1),
]


def picture(path, seed):
    Image.fromarray((np.random.RandomState(seed).rand(48, 64, 3) * 255).astype(np.uint8)).save(path)


@pytest.fixture()
def manifest(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(("red.png", "blue.png", "noise.png", "grey.png")):
        picture(folder / name, seed)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = folder / "rows.csv"
    path.write_text("image,prompt,seed\n" + "".join(f"{i},{p},{s}\n" for i, p, s in ROWS), encoding="utf-8")
    return path


def expected_frames(model, manifest, threads):
    """The frames animate() gives each good row, in this process, with `threads` torch threads (a float sum
    rounds by how it is split over threads; the workers are given the same number)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {(name, seed): to_uint8(animate(model, load_image(manifest.parent / name), prompt, seed=seed,
                                               steps=2, frames=3))
                for name, prompt, seed in ROWS if name != "broken.png"}
    finally:
        torch.set_num_threads(before)


def read_frames(folder):
    return np.stack([np.asarray(Image.open(f)) for f in sorted(folder.iterdir())])


def report(outdir):
    return [json.loads(line) for line in (outdir / "report.jsonl").read_text().splitlines()]


def check_outputs(outdir, manifest, expected, summary):
    assert (summary.done, summary.failed, summary.skipped) == (5, 1, 0)
    lines = report(outdir)
    assert len(lines) == 6
    failed = [line for line in lines if line["status"] == "failed"]
    assert [f["where"] for f in failed] == ["line 5"] and "broken.png" in failed[0]["error"]
    rows = {(r.image.name, r.seed): r for r in read_rows(manifest, outdir, SETTINGS)}
    for key, frames in expected.items():
        made = read_frames(rows[key].output)
        assert made.shape == (3, 64, 64, 3) and np.array_equal(made, frames), key
    return lines


def test_a_manifest_with_a_corrupt_image_gives_the_other_videos_as_animate_makes_them(tiny_model, manifest, tmp_path):
    outdir = tmp_path / "out"
    summary = run_batch(manifest, outdir, SPEC, SETTINGS, device="cpu", workers=1, progress=False)
    lines = check_outputs(outdir, manifest, expected_frames(tiny_model, manifest, torch.get_num_threads()), summary)
    assert all(line["seconds"] > 0 for line in lines) and len({line["worker"] for line in lines}) == 1
    assert len({line["output"] for line in lines}) == 6  # the same image twice, with another seed: two videos


def test_two_embedded_workers_on_the_cpu_share_its_threads_and_give_the_same_videos(tiny_model, manifest, tmp_path):
    outdir = tmp_path / "out"
    threads = torch.get_num_threads()
    summary = run_batch(manifest, outdir, SPEC, SETTINGS, device="cpu", workers=2, progress=False)
    assert torch.get_num_threads() == threads  # given back
    lines = check_outputs(outdir, manifest, expected_frames(tiny_model, manifest, max(1, threads // 2)), summary)
    assert summary.workers == 2 and len({line["worker"] for line in lines}) == 2


def test_a_stopped_run_resumes_without_touching_what_was_made(manifest, tmp_path):
    outdir = tmp_path / "out"
    made = []

    def stop_after_two(result):
        made.append(result)
        if len([r for r in made if r.status == "done"]) == 2:
            raise KeyboardInterrupt  # the driver stopped (Ctrl-C) after two videos

    with pytest.raises(KeyboardInterrupt):
        run_batch(manifest, outdir, SPEC, SETTINGS, device="cpu", workers=1, progress=False, on_result=stop_after_two)
    first = {r.output: (outdir / r.output).stat().st_mtime_ns for r in made if r.status == "done"}
    assert len(first) == 2
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")]  # no half-written output left behind
    summary = run_batch(manifest, outdir, SPEC, SETTINGS, device="cpu", workers=1, progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (3, 1, 2)
    assert {o: (outdir / o).stat().st_mtime_ns for o in first} == first
    rows = read_rows(manifest, outdir, SETTINGS)
    assert sum(r.output.exists() for r in rows) == 5
    again = report(outdir)[len(made):]
    assert sorted(line["output"] for line in again if line["status"] == "skipped") == sorted(first)


@pytest.mark.parametrize("csv_text,message", [
    ("image,prompt\nred.png,a\nmissing.png,b\n", "line 3: image 'missing.png' does not exist"),
    ("image,prompt,speed\nred.png,a,2\n", "line 1: unknown column(s) 'speed'"),
    ("image,seed\nred.png,1\nred.png,-1\n", "line 3: seed must be a whole number from 0"),
    ("image,steps\nred.png,0\n", "line 2: steps must be a whole number from 1 to 1000; got 0"),
    ("image,mode\nred.png,interpolation\n", "line 2: mode interpolation needs an end_image"),
    ("image,output\nred.png,a.mp4\nblue.png,a.mp4\n", "line 3: its output a.mp4 is also line 2's"),
])
def test_a_bad_row_is_refused_with_its_line_before_any_model_is_loaded(csv_text, message, manifest, tmp_path,
                                                                        monkeypatch, capsys):
    path = manifest.parent / "bad.csv"
    path.write_text(csv_text, encoding="utf-8")
    monkeypatch.setattr("dynamicrafter_core.checkpoint.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    status = main(["batch", str(path), "-o", str(tmp_path / "out"), "--checkpoint", str(CHECKPOINT)])
    err = capsys.readouterr().err
    assert status == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_jsonl_row_with_a_fractional_seed_is_refused_with_its_line(manifest, tmp_path):
    path = manifest.parent / "rows.jsonl"
    path.write_text('{"image": "red.png"}\n\n{"image": "blue.png", "seed": 1.5}\n', encoding="utf-8")
    with pytest.raises(batch.InputError, match=r"line 3: seed must be a whole number .* got 1\.5"):
        read_rows(path, tmp_path / "out", SETTINGS)


def test_a_folder_takes_each_images_sidecar_prompt_and_dry_run_prints_the_plan(manifest, tmp_path, capsys):
    folder = manifest.parent
    (folder / "broken.png").unlink()
    (folder / "red.txt").write_text("a red square\n", encoding="utf-8")
    rows = {r.image.name: r for r in read_rows(folder, tmp_path / "out", Settings(prompt="default"))}
    assert sorted(rows) == ["blue.png", "grey.png", "noise.png", "red.png"]
    assert rows["red.png"].prompt == "a red square" and rows["blue.png"].prompt == "default"
    status = main(["batch", str(folder), "-o", str(tmp_path / "out"), "--dry-run", "--checkpoint", "absent.ckpt"])
    out = capsys.readouterr().out
    assert status == 0 and "4 rows: 4 to make, 0 already made" in out
    assert not (tmp_path / "out").exists()


def test_a_row_whose_worker_fails_is_given_to_another_a_bounded_number_of_times(tmp_path):
    """A worker out of memory (or dying) is not the row's fault: the row goes to another worker; a row that fails on
    every try is recorded as failed and the others go on."""
    class FlakyWorker:
        def __init__(self, index, device):
            self.name = device

        def run(self, row):
            if row.where == "poison" or (row.where == "big" and self.name == "gpu0"):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return batch.result(row, "done", 0.1, self.name)

    rows = [batch.Row(where=w, image=tmp_path / f"{w}.png", prompt="", output=tmp_path / w)
            for w in ("big", "small", "poison", "last")]
    pool = batch.EmbeddedPool(FlakyWorker, ["gpu0", "gpu1"])
    results = []
    try:
        batch.drive(pool, rows, retries=2, on_result=results.append)
    finally:
        pool.close()
    by_row = {r.where: r for r in results}
    assert sorted(by_row) == ["big", "last", "poison", "small"]
    assert by_row["big"].status == "done" and by_row["big"].worker == "gpu1"
    assert by_row["poison"].status == "failed" and by_row["poison"].attempts == 3
    assert "OutOfMemoryError: CUDA out of memory" in by_row["poison"].error


def test_ray_missing_says_how_to_install_it(manifest, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray raises ImportError
    status = main(["batch", str(manifest), "-o", str(tmp_path / "out"), "--ray", "--checkpoint", str(CHECKPOINT)])
    err = capsys.readouterr().err
    assert status == 2 and 'pip install "dynamicrafter-animate[ray]"' in err


@pytest.fixture()
def local_ray():
    ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[test,ray]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # Ray's start and two actors that import torch: ~20 s on two cores
def test_on_ray_two_actors_give_the_same_videos_and_record_the_failure(tiny_model, manifest, tmp_path, local_ray):
    outdir = tmp_path / "out"
    summary = run_batch(manifest, outdir, SPEC, SETTINGS, use_ray=True, workers=2, progress=False)
    # two actors on two CPUs: one torch thread each (Ray's OMP_NUM_THREADS)
    lines = check_outputs(outdir, manifest, expected_frames(tiny_model, manifest, 1), summary)
    assert summary.workers == 2 and len({line["worker"] for line in lines}) == 2


def test_the_command_line_writes_the_report_and_exits_1_when_a_row_failed(manifest, tmp_path, capsys):
    status = main(["batch", str(manifest), "-o", str(tmp_path / "out"), "--checkpoint", str(CHECKPOINT), "--config",
                   str(CONFIG_FILE), "--steps", "2", "--frames", "3", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "5 done, 1 failed, 0 skipped" in err and "videos per hour" in err
    assert len([p for p in (tmp_path / "out").iterdir() if p.suffix == ".mp4"]) == 5




@pytest.mark.slow  # Ray, and an actor that starts again and reloads the model: ~30 s on two cores
def test_on_ray_a_killed_worker_loses_nothing(tiny_model, manifest, tmp_path, local_ray):
    """The process of the worker that made the first video is killed (SIGKILL, as the kernel's out-of-memory killer
    does): its next row is given to a worker that lives, or Ray starts it again, and every row is still made once
    with the same frames."""
    import os
    import signal

    outdir, killed = tmp_path / "out", []

    def kill_first_worker(result):
        if not killed:
            killed.append(int(result.worker.split("/")[1]))  # host/pid/device
            os.kill(killed[0], signal.SIGKILL)

    summary = run_batch(manifest, outdir, SPEC, SETTINGS, use_ray=True, workers=2, progress=False,
                        on_result=kill_first_worker)
    lines = check_outputs(outdir, manifest, expected_frames(tiny_model, manifest, 1), summary)
    workers = {line["worker"] for line in lines}
    # the killed worker's next row went to the other worker, or to the killed one started again (a new process)
    assert any(line["attempts"] == 2 for line in lines) or len(workers) == 3, lines
