"""reconstruct never destroys data it does not own: not the source, not an unrelated folder."""
import hashlib

import pytest
import xarray as xr

import xrimpute
from test_lazy import archive
from xrimpute.reconstruct import TargetError, reconstruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A zarr archive on disk and a model of it (two training steps: only the checks run)."""
    root = tmp_path_factory.mktemp("safety")
    archive(t=8, n=8).chunk(time=4).to_zarr(root / "source.zarr", consolidated=False)
    xrimpute.fit(archive(t=8, n=8), mask="pixel", steps=2, batch_size=2, progress=False, verbose=False,
                 val_fraction=0.0).save(root / "model.xri")
    return root


def snapshot(folder):
    """Every file under ``folder`` (relative path) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["source itself", "inside the source", "holding the source"])
def test_a_target_overlapping_the_source_is_refused_and_the_source_is_untouched(case, where, tmp_path):
    source = case / "source.zarr"
    before = snapshot(case)
    target = {"source itself": source, "inside the source": source / "filled.zarr",
              "holding the source": case}[where]
    for given in (source, str(source), xr.open_zarr(source, consolidated=False)):  # path, text, opened Dataset
        with pytest.raises(TargetError, match="source"):
            reconstruct(given, case / "model.xri", target, overwrite=True, progress=False, K=1)
    assert snapshot(case) == before


def test_overwrite_refuses_a_folder_that_is_no_zarr_store_and_keeps_its_file(case, tmp_path):
    target = tmp_path / "d.zarr"
    target.mkdir()
    (target / "notes.txt").write_bytes(b"field notes, not a zarr store\n")
    before, source_before = snapshot(tmp_path), snapshot(case / "source.zarr")
    with pytest.raises(TargetError, match="notes.txt"):
        reconstruct(case / "source.zarr", case / "model.xri", target, overwrite=True, progress=False, K=1)
    assert snapshot(tmp_path) == before
    assert snapshot(case / "source.zarr") == source_before


def test_overwrite_refuses_a_plain_file_and_keeps_it(case, tmp_path):
    target = tmp_path / "d.zarr"
    target.write_bytes(b"not a store")
    with pytest.raises(TargetError, match="a file"):
        reconstruct(case / "source.zarr", case / "model.xri", target, overwrite=True, progress=False, K=1)
    assert target.read_bytes() == b"not a store"


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_reconstruction(case, tmp_path, cluster):
    from distributed import default_client

    with pytest.raises(ValueError, match="No clients found"):
        default_client()  # the client given is not dask's default one: reconstruct waits on its own client's loop
    target = tmp_path / "filled.zarr"
    first = reconstruct(case / "source.zarr", case / "model.xri", target, client=cluster, progress=False, K=1,
                        seed=0).load()
    again = reconstruct(case / "source.zarr", case / "model.xri", target, overwrite=True, client=cluster,
                        progress=False, K=1, seed=0).load()
    xr.testing.assert_identical(first, again)
