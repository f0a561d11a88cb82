"""The *… files…* button of the Restore and Isotropic docks: the dock's options applied to image
files on disk, written into a folder, as ``emdiffuse denoise FILES -o FOLDER`` (or
``emdiffuse isotropic``) does, through :func:`napari_emdiffuse.batches.restore_files_iter`.

Each result takes its file's name, its uncertainty goes into ``FOLDER/uncertainty`` (removed
again when empty), the progress bar counts files, a file that cannot be read is skipped and
named on the status line, and Cancel keeps the files already finished. The folder may be an
object store's (``s3://bucket/clean/``, typed into the destination dialog) when the results
are zarr stores (Advanced > *files… as*), as ``-o s3://bucket/clean/`` is for the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from qtpy.QtWidgets import QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout

from ..engine.errors import EMDiffuseError, InputError
from ..engine.events import duration, files_left
from ..engine.io.common import is_url
from ..engine.io.fetch import join
from ._jobs import notify_error, notify_info

__all__ = ["FILE_FILTER", "DestinationDialog", "FilesMixin"]

#: The file dialog's choice (what the readers take).
FILE_FILTER = ("Images (*.tif *.tiff *.mrc *.mrcs *.rec *.st *.ali *.map *.map.gz *.mrc.gz *.dm3 *.dm4 *.ser *.h5 *.hdf5 "
               "*.emd *.hspy *.ims *.am *.czi *.png *.jpg *.jpeg *.bmp);;All files (*)")


class DestinationDialog(QDialog):
    """Where a files run writes: a folder (typed, or chosen with *Browse…*) or an object
    store's folder typed as a URL (``s3://bucket/clean/``: zarr stores, or TIFF / MRC files
    uploaded whole)."""

    def __init__(self, parent: Any = None, *, last: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("Write the results into")
        self.place = QLineEdit(last)
        self.place.setPlaceholderText("a folder, or an object store's: s3://bucket/clean/")
        self.place.setMinimumWidth(420)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.place)
        row.addWidget(browse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write the results into", self.folder())
        if folder:
            self.place.setText(folder)

    def folder(self) -> str:
        """The place typed or chosen ("" for none)."""
        return self.place.text().strip()


class FilesMixin:
    """Mixed into a :class:`~._base.DockWidget` (before it) that defines :meth:`files_job`.

    ``FILES_VERB`` names the work in the dialogs and the status line ("restore",
    "reconstruct")."""

    FILES_VERB: ClassVar[str] = "restore"

    def files_job(self) -> tuple[str, Any, dict[str, Any]]:
        """The task, the model and the keyword arguments of ``restore_files_iter`` that the
        dock's options give (validated; raising EMDiffuseError before anything starts); with
        ``uncertainty=False`` among them, no uncertainty is written."""
        raise NotImplementedError

    def make_files_button(self, tip: str) -> QPushButton:
        """The button that asks for files, then for a folder, and runs them."""
        button = QPushButton(f"{self.FILES_VERB.capitalize()} files…")
        button.setToolTip(tip)
        button.clicked.connect(self._choose_files)
        return button

    def _choose_files(self) -> None:
        if self.running:
            return
        files, _ = QFileDialog.getOpenFileNames(self, f"{self.FILES_VERB.capitalize()} files", "", FILE_FILTER)
        if not files:
            return
        ask = DestinationDialog(self, last=getattr(self, "_last_destination", ""))
        if ask.exec() == QDialog.DialogCode.Accepted and ask.folder():
            self._last_destination = ask.folder()
            self.run_files(files, ask.folder())

    def run_files(self, files: list[str], folder: str) -> bool:
        """Run ``files`` into ``folder`` (the uncertainty into ``folder/uncertainty``); a
        folder or an object store's URL; False (and a notification) if it cannot start: no
        file, a clash of names, an output that would replace an input, options that do not
        validate, a URL that cannot be reached or written."""
        if self._run is not None:
            return False
        try:
            self._start_files(files, folder)
        except EMDiffuseError as exc:
            notify_error(str(exc))
            self.status.setText(f"not started: {exc}")
            return False
        return True

    def _start_files(self, files: list[str], folder: str) -> None:
        from ..engine.io.batch import expand_inputs, plan_batch
        from ..batches import restore_files_iter

        if not files:
            raise InputError("no files chosen")
        task, model, kwargs = self.files_job()
        where: Any = folder.rstrip("/") if is_url(folder) else Path(folder)
        unc_dir = join(where, "uncertainty") if kwargs.pop("uncertainty", True) else None
        plan = plan_batch(expand_inputs(files), folder, unc_dir, ext=kwargs.get("ext"))  # names, clashes: before any work
        self._files_folder = folder
        self._files_unc = unc_dir
        n = len(plan)
        self._start_engine(
            lambda: restore_files_iter(files, folder, task, model, uncertainty_dir=unc_dir, **kwargs),
            status=f"{self.FILES_VERB.rstrip('e')}ing {n} file{'s' * (n != 1)} into '{folder}'…",
            desc=f"EMDiffuse {task}: {n} files",
            stages=("file",),
            on_result=lambda done: self._files_done(done, folder),
        )

    def _estimate(self, ev: Any, status: str) -> None:
        """A files run: which file, and the time left at the pace of those done."""
        if ev.stage not in ("file", "files") or getattr(self, "_files_folder", None) is None:
            super()._estimate(ev, status)
            return
        if ev.done < ev.total:
            left = files_left(self._elapsed(), ev.done, ev.total)
            at = "file" if ev.stage == "file" else "files done:"
            where = f"{at} {ev.done + 1 if ev.stage == 'file' else ev.done} of {ev.total}"
            self.status.setText(f"{status} {where}" + (f", about {duration(left)} left" if left else ""))

    def _drop_empty_uncertainty(self) -> None:
        unc_dir = getattr(self, "_files_unc", None)
        if isinstance(unc_dir, Path) and unc_dir.is_dir() and not any(unc_dir.iterdir()):  # (a URL has no folders)
            unc_dir.rmdir()  # one sample, or stopped before any: no uncertainty was written

    def _finished(self, outcome: str) -> None:
        folder, self._files_folder = getattr(self, "_files_folder", None), None
        if folder is not None:
            self._drop_empty_uncertainty()
        super()._finished(outcome)
        if folder is not None and outcome in ("cancelled", "failed"):  # files: some may be done
            head = "cancelled" if outcome == "cancelled" else self.status.text()
            self.status.setText(f"{head}; the files finished before it are in '{folder}', the one in progress "
                                "was not written")

    def _files_done(self, done: Any, folder: str) -> None:
        self._drop_empty_uncertainty()
        verb = f"{self.FILES_VERB.rstrip('e')}ed"
        text = f"{verb} {len(done.written)} of {done.total} files into '{folder}' in {self._elapsed():.1f} s"
        if done.skipped:
            text += f"; skipped {len(done.skipped)}: " + "; ".join(f"{Path(s).name}: {why}" for s, why in done.skipped[:3])
            notify_info(f"{len(done.skipped)} of {done.total} files were skipped (see the {self.SETTINGS.capitalize()} widget)")
        self.status.setText(text)
