"""What both layouts' readers share: an open HDF5 episode file whose every read names the key
and the file when it fails, and the checks that end every `validate`."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from maniflow.robotwin.cameras import check_camera
from maniflow.robotwin.episode import ROBOTWIN_TCP_OFFSET, TCP_OFFSET_ATTR, CameraMatrices, EpisodeError, decode_frames


class HDF5Episode:
    """An open episode file. Use as a context manager. A layout's reader names its frames
    (`frames_key`) and adds `validate`, `provenance` and `instructions_in_file`."""

    layout = ""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise EpisodeError(self.path, "unreadable", f"cannot open HDF5 file ({e})") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()

    def frames_key(self, camera: str = "head") -> str:
        raise NotImplementedError

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file.attrs.items()}

    def tcp_offset(self) -> tuple[float, str]:
        """Metres from the stored end pose to the fingertip centre along the pose's x axis,
        and where that number comes from."""
        value = self._file.attrs.get(TCP_OFFSET_ATTR)
        if value is not None:
            return float(value), f"file attribute {TCP_OFFSET_ATTR}"
        return ROBOTWIN_TCP_OFFSET, "RoboTwin endpose convention (_trans_endpose)"

    def source_episode(self) -> tuple[str, str, int] | None:
        """(task, config, number) of the file this one was converted from; None when recorded."""
        return None

    def recorded_frames(self, camera: str = "head") -> int:
        """Frames whose image is stored."""
        return int(self._dataset(self.frames_key(camera)).shape[0])

    def rgb(self, camera: str = "head", start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stored frames [start, stop) of a camera as RGB uint8 (n, H, W, 3)."""
        key = self.frames_key(camera)
        return decode_frames(self._read(key, slice(start, stop)), self.path, key, start)

    # -- reading, every failure located --------------------------------------------------------
    def _dataset(self, key: str) -> h5py.Dataset:
        try:
            ds = self._file[key]
        except KeyError:
            raise EpisodeError(self.path, "missing_key", "key not found in file", key) from None
        except (OSError, RuntimeError) as e:
            raise EpisodeError(self.path, "unreadable", f"cannot read ({e})", key) from e
        if not isinstance(ds, h5py.Dataset):
            raise EpisodeError(self.path, "missing_key", "expected a dataset, found a group", key)
        return ds

    def _read(self, key: str, sel=slice(None)) -> np.ndarray:
        ds = self._dataset(key)
        try:
            return ds[sel]
        except (OSError, RuntimeError, ValueError) as e:
            raise EpisodeError(self.path, "unreadable", f"cannot read data ({e})", key) from e

    def _float(self, key: str, shape_tail: tuple | None) -> np.ndarray:
        """A numeric (T, *shape_tail) array; shape_tail None: any (T, D) with D >= 1, a 1-d
        array read as one column."""
        arr = np.asarray(self._read(key))
        if shape_tail is None and arr.ndim == 1:
            arr = arr[:, None]
        ok = arr.shape[1:] == shape_tail if shape_tail is not None else arr.ndim == 2 and arr.shape[1] >= 1
        if not ok or not np.issubdtype(arr.dtype, np.number):
            expected = ", ".join(map(str, shape_tail)) if shape_tail is not None else "D"
            raise EpisodeError(self.path, "shape_mismatch",
                               f"expected (T, {expected}) numbers, found {arr.shape} {arr.dtype}", key)
        return arr.astype(np.float64)

    # -- checks --------------------------------------------------------------------------------
    def _check_lengths(self, arrays: dict[str, np.ndarray], n: int, reference: str) -> None:
        for key, arr in arrays.items():
            if len(arr) != n:
                raise EpisodeError(self.path, "length_mismatch", f"{len(arr)} entries but {reference} has {n} "
                                   "frames", key, frame=min(len(arr), n))

    def _check_camera(self, camera: str, cams: CameraMatrices, keys: dict[str, str],
                      compare_cam2world: bool) -> None:
        """The camera against the size of its first frame (see `cameras.check_camera`)."""
        height, width = self.rgb(camera, 0, 1).shape[1:3]
        check_camera(self.path, cams, width, height, keys, compare_cam2world)
