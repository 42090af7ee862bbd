"""The xrimpute command: help for newcomers, one-line errors with exit status 2, fit + impute end to end."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import xrimpute
from samples import ERA5_SAMPLE, needs_era5
from synthetic import blobs
from xrimpute import cli
from xrimpute.cli import build_parser, main
from xrimpute.errors import NonFiniteLossError, WorkFailedError

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def run(*args, cwd=None):
    """``python -m xrimpute ARGS`` in a fresh process (one torch thread: fast on a busy 2-core machine too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "xrimpute", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def observed_file(tmp_path_factory):
    truth = blobs(n=2, t=8, size=12, seed=0)
    observed = truth.where(np.random.default_rng(0).random(truth.shape) < 0.5)
    assert observed.notnull().any(["sample", "time"]).all()  # impute leaves cells never observed NaN
    path = tmp_path_factory.mktemp("cli") / "observed.nc"
    observed.to_dataset().to_netcdf(path)
    return path


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for name in ("fit", "impute", "reconstruct", "check", "datasets", "quickstart", "versions"):
        assert f"\n    {name}" in result.stdout, name
    assert "example:" in result.stdout


def test_help_imports_neither_torch_nor_distributed():
    code = ("import sys\nfrom xrimpute.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'distributed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "quickstart"])
def test_each_command_explains_itself_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 15, description  # a paragraph, not a label
    assert f"example:\n  xrimpute {command}" in text


def test_quickstart_help_comes_from_the_quickstart_itself(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["quickstart", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: xrimpute quickstart")


def test_a_missing_file_is_one_line_on_stderr_and_exit_status_2(tmp_path):
    result = run("fit", "no-such-file.nc", "--out", "model.xri", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xrimpute fit: error: 'no-such-file.nc' does not exist")
    assert not (tmp_path / "model.xri").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["impute", "{data}", "--model", "missing.xri", "--out", "{tmp}/f.nc"], "no model file"),
        (["impute", "{data}", "--model", "m.xri", "--out", "{tmp}/filled.csv"], "name it *.nc"),
        (["fit", "{data}", "--out", "{tmp}/model.pt"], "name the model file *.xri"),
        (["fit", "{data}", "--out", "{tmp}/m.xri", "--variables", "v"], "unknown variable(s) ['v']"),
        (["fit", "{data}", "--out", "{data}.xri"], "exists; choose another name or pass --overwrite"),
        (["datasets", "fetch"], "name the dataset to fetch"),
        (["reconstruct", "{data}", "{tmp}/m.xri", "{tmp}/out.nc"], "name the zarr store *.zarr"),
        (["reconstruct", "{data}", "{tmp}/m.xri", "{tmp}/out.zarr"], "no model file"),
    ],
)
def test_bad_input_gives_a_one_line_error_and_exit_status_2(argv, message, observed_file, tmp_path, capsys):
    observed_file.with_suffix(".nc.xri").touch()
    argv = [a.format(data=observed_file, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "{data}", "--out", "{tmp}/m.xri", "--window", "0"], "argument --window: 0 is too small"),
        (["check", "{data}", "--window", "0"], "argument --window: 0 is too small"),
        (["impute", "{data}", "--model", "{tmp}/m.xri", "--out", "{tmp}/f.nc", "--K", "0"], "argument --K: 0 is"),
        (["impute", "{data}", "--model", "{tmp}/m.xri", "--out", "{tmp}/f.nc", "--K", "-1"], "argument --K: -1 is"),
        (["fit", "{data}", "--out", "{tmp}/m.xri", "--batch-size", "0"], "argument --batch-size: 0 is too small"),
        (["reconstruct", "{data}", "{tmp}/m.xri", "{tmp}/o.zarr", "--workers", "0"], "argument --workers: 0 is"),
        (["fit", "{data}", "--out", "{tmp}/m.xri", "--variables", ""], "argument --variables: '' names nothing"),
        (["fit", "{data}", "--out", "{tmp}/m.xri", "--device", "tpu"], "--device 'tpu' is not a device"),
        (["bench", "table2", "--device", "tpu", "--out", "{tmp}/bench"], "--device 'tpu' is not a device"),
        (["fit", "{data}", "--out", "{tmp}/m.xri", "--checkpoint", "{data}"], "--checkpoint '{data}' is not a "
                                                                             "training state file"),
        (["impute", "{data}", "--model", "{data}", "--out", "{tmp}/f.nc"], "is not an xrimpute model file"),
        (["reconstruct", "{data}", "{data}", "{tmp}/o.zarr"], "is not an xrimpute model file"),
    ],
)
def test_impossible_options_end_in_one_line_and_exit_status_2_before_any_work(argv, message, observed_file, tmp_path,
                                                                               capsys):
    argv = [a.format(data=observed_file, tmp=tmp_path) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # refused by the parser
        status = exit_.code
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert message.format(data=observed_file) in captured.err and "Traceback" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_device_cuda_without_cuda_says_so_before_reading_the_data(observed_file, tmp_path, capsys):
    assert main(["fit", str(observed_file), "--out", str(tmp_path / "m.xri"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sees no CUDA GPU; use cpu or auto" in err, err


FAILED_REGIONS = ("1 of 4 regions failed (region 2: OSError('disk full')); the others are recorded: rerun reconstruct "
                  "with the same arguments to finish")


@pytest.mark.parametrize("error", [WorkFailedError(FAILED_REGIONS),
                                   NonFiniteLossError("the loss became NaN at step 7; lower the learning rate")])
def test_work_that_fails_ends_in_one_line_and_exit_status_1(error, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_versions", fail)  # the command run, whatever it is; no input of the user's to blame
    assert main(["versions"]) == 1
    err = capsys.readouterr().err
    assert err == f"xrimpute versions: error: {error}\n"


def test_bad_options_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "data.nc", "--out", "m.xri", "--mask", "hexagons"])
    assert exit_.value.code == 2
    assert "invalid choice: 'hexagons'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "data.nc", "--out", "m.xri", "--tile", "12x"])
    assert exit_.value.code == 2


def test_fit_offers_every_network_preset():
    from xrimpute.cli import PRESETS
    from xrimpute.nets import PRESETS as NETWORKS

    assert set(PRESETS) == {"auto", *NETWORKS}


def test_fit_then_impute_through_the_command_line(observed_file, tmp_path):
    model_path, out = tmp_path / "m.xri", tmp_path / "filled.nc"
    fit = run("fit", str(observed_file), "--out", str(model_path), "--mask", "pixel", "--steps", "5",
              "--batch-size", "4", "--preset", "tiny", "--history", "on", "--nearby", "on", "--device", "cpu", "-q")
    assert fit.returncode == 0, fit.stderr
    assert "saved to" in fit.stdout and "tiny U-Net" in fit.stdout and "history outside the window" in fit.stdout
    assert "steps before and after the window" in fit.stdout
    model = xrimpute.load(model_path)
    assert model.history.step[-1] == 5  # steps taken
    assert model.engine.denoiser.uses_history  # pixels alone would not have chosen it
    assert model.engine.denoiser.nearby_span and model.info["nearby"]  # nor this

    impute = run("impute", str(observed_file), "--model", str(model_path), "--out", str(out), "--K", "2", "--std",
                 "-q")
    assert impute.returncode == 0, impute.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filled.nc", "m.xri"]  # no temporary left over
    with xr.open_dataset(observed_file) as seen, xr.open_dataset(out) as filled:
        assert set(filled.data_vars) == {"u", "u_std"} and filled["u"].dims == seen["u"].dims
        assert int(filled["u"].isnull().sum()) == 0
        xr.testing.assert_equal(filled["u"].where(seen["u"].notnull()), seen["u"])  # observations kept exactly
        assert filled["u"].attrs["ancillary_variables"] == "u_std"  # CF: the spread is named on the variable
        # every gap has a spread, also one far below its value (float64 sums), and observed cells none
        assert float(filled["u_std"].where(seen["u"].isnull()).min()) > 0
        assert float(filled["u_std"].where(seen["u"].notnull()).max()) == 0

    assert main(["impute", str(observed_file), "--model", str(model_path), "--out", str(out), "-q"]) == 2
    assert main(["impute", str(observed_file), "--model", str(model_path), "--out", str(tmp_path / "f.zarr"),
                 "--K", "1", "-q"]) == 0
    with xr.open_zarr(tmp_path / "f.zarr") as filled:
        assert int(filled["u"].isnull().sum()) == 0


def test_check_says_when_a_mask_leaves_gaps_unlearned(tmp_path, capsys):
    truth = blobs(n=2, t=6, size=12, seed=1)
    blocks = xrimpute.observe(truth, "block", grid=(3, 3), observed=6, seed=0)
    path = tmp_path / "blocks.nc"
    blocks.to_dataset().to_netcdf(path)
    assert main(["check", str(path), "--mask", "pixel"]) == 1
    out = capsys.readouterr().out
    assert "looks like block observations" in out and "never learned" in out
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "every observed cell has a positive probability" in out and out.count("looks like block") == 1


def test_check_of_a_file_without_gaps_says_nothing_to_fill(tmp_path, capsys):
    path = tmp_path / "complete.nc"
    blobs(n=1, t=6, size=12, seed=1).to_dataset().to_netcdf(path)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "Nothing to fill: every cell is observed."


def test_datasets_lists_by_default_and_versions(capsys):
    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("era5", "advection", "shallow_water", "navier_stokes"):
        assert f"\n{name} " in f"\n{listing}"
    assert main(["datasets"]) == 0
    assert capsys.readouterr().out == listing
    assert main(["versions"]) == 0
    assert "torch:" in capsys.readouterr().out


def test_datasets_fetch_generates_a_pde_sample_and_prints_its_path(tmp_path, capsys):
    assert main(["datasets", "fetch", "advection", "--out", str(tmp_path / "adv.nc"), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("advection: variables") and out[-1] == str(tmp_path / "adv.nc")
    with xr.open_dataset(tmp_path / "adv.nc") as ds:
        assert ds.sizes["sample"] == 8


@needs_era5
def test_datasets_fetch_era5_prints_a_netcdf_path_the_other_commands_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XRIMPUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XRIMPUTE_DATA_URL", "http://127.0.0.1:9/")  # the cache has it: never the network
    shutil.copy(ERA5_SAMPLE, tmp_path / ERA5_SAMPLE.name)
    assert main(["datasets", "fetch", "era5", "-q"]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path.parent == tmp_path and path.suffix == ".nc"
    with xr.open_dataset(path) as ds:
        assert ds["t2m"].shape == (744, 33, 49)
