"""Screenshots of the dock widgets for the README and docs/widgets.md.

Opens napari (under a virtual display on a headless machine), loads the plugin's sample
data, docks each widget and saves the whole window::

    xvfb-run -a python docs/make_screenshots.py            # writes docs/*_widget.png

With ``--run``, the Restore and Isotropic widgets also run once with the installed
(bundled) models so the screenshots show a result; without models they show the inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PLUGIN = "napari-emdiffuse"
SIZE = (1400, 860)


def _register_plugin() -> None:
    """Use the installed plugin, or this checkout's manifest when it is not installed."""
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    if PLUGIN not in pm:
        sys.path.insert(0, str(ROOT / "src"))
        pm.register(npe2.PluginManifest.from_file(ROOT / "src" / "napari_emdiffuse" / "napari.yaml"))


def _scale_bar(viewer):
    # napari >= 0.9 moved these; older versions keep the viewer attributes.
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar


def _settle(viewer, qapp, ms: int = 400) -> None:
    import time

    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        qapp.processEvents()
        time.sleep(0.02)


def _wait_idle(widget, qapp, timeout_s: float = 600) -> None:
    import time

    end = time.monotonic() + timeout_s
    while widget.running and time.monotonic() < end:
        qapp.processEvents()
        time.sleep(0.05)


def _shot(viewer, qapp, name: str) -> Path:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    _settle(viewer, qapp)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # e.g. napari's PyQt5 deprecation notice: not part of the plugin
    _settle(viewer, qapp, 200)
    out = DOCS / name
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the widgets with the installed models")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    _register_plugin()
    viewer = napari.Viewer(show=True, title="napari-emdiffuse")
    qapp = QApplication.instance()
    viewer.window._qt_window.resize(*SIZE)
    viewer.window._qt_window.setMinimumSize(*SIZE)
    _scale_bar(viewer).visible = True

    # Restore: the noisy FIB-SEM sample with its clean reference hidden underneath.
    viewer.open_sample(PLUGIN, "noisy_fibsem_pair")
    _, restore = viewer.window.add_plugin_dock_widget(PLUGIN, "Restore")
    restore.advanced.expand(animate=False)
    restore.layer_combo.set_layer(viewer.layers["liver_noisy"])
    if args.run:
        restore.run()
        _wait_idle(restore, qapp)
    viewer.reset_view()
    _shot(viewer, qapp, "restore_widget.png")
    viewer.window.remove_dock_widget("all")

    # Isotropic: the anisotropic C. elegans stack, seen from the side (Z vertical).
    viewer.layers.clear()
    viewer.open_sample(PLUGIN, "anisotropic_volume")
    _, iso = viewer.window.add_plugin_dock_widget(PLUGIN, "Isotropic reconstruction")
    iso.layer_combo.set_layer(viewer.layers["celegans_z3"])
    if args.run:
        iso.run()
        _wait_idle(iso, qapp)
    viewer.dims.order = (1, 0, 2)  # show a ZX plane: the coarse z sampling is visible
    viewer.reset_view()
    _shot(viewer, qapp, "isotropic_widget.png")
    viewer.window.remove_dock_widget("all")

    # Fine-tune: the noisy / clean pair as input and target.
    viewer.layers.clear()
    viewer.dims.order = (0, 1)
    viewer.open_sample(PLUGIN, "noisy_fibsem_pair")
    _, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    ft.input_combo.set_layer(viewer.layers["liver_noisy"])
    ft.target_combo.set_layer(viewer.layers["liver_clean"])
    viewer.reset_view()
    _shot(viewer, qapp, "finetune_widget.png")
    viewer.window.remove_dock_widget("all")

    _score_shot(viewer, qapp, run=args.run)

    # Open by URL: the C. elegans sample as an OME-Zarr store served over HTTP on this machine.
    _url_shot(viewer, qapp)
    viewer.close()


def _score_shot(viewer, qapp, *, run: bool) -> None:
    """Score: the noisy sample and (with ``run``) its restoration against the clean layer."""
    viewer.layers.clear()
    viewer.open_sample(PLUGIN, "noisy_fibsem_pair")
    ticked = ["liver_noisy"]
    if run:
        from napari_emdiffuse.api import restore

        result = restore(viewer.layers["liver_noisy"].data, "denoise", "demo-denoise")
        noisy = viewer.layers["liver_noisy"]
        for data, name, colormap in ((result.mean, "liver_noisy_denoised", "gray"),
                                     (result.uncertainty, "liver_noisy_denoised_uncertainty", "magma")):
            viewer.add_image(data, name=name, scale=noisy.scale, units=noisy.units, colormap=colormap,
                             visible=colormap == "gray")  # as the Restore dock adds them
        ticked.append("liver_noisy_denoised")
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score")
    score.reference.set_layer(viewer.layers["liver_clean"])
    score.set_checked(ticked)
    score.run()
    _wait_scored(score, qapp)
    viewer.reset_view()
    _shot(viewer, qapp, "score_widget.png")
    viewer.window.remove_dock_widget("all")


def _wait_scored(widget, qapp, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while widget.worker is not None and time.monotonic() < end:
        qapp.processEvents()
        time.sleep(0.05)


def _url_shot(viewer, qapp) -> None:
    import functools
    import http.server
    import tempfile
    import threading

    from napari_emdiffuse._sample_data import sample_path
    from napari_emdiffuse.engine.io.images import read_image, write_image

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    viewer.layers.clear()
    with tempfile.TemporaryDirectory() as tmp:
        img = read_image(sample_path("celegans_anisotropic_z3.tif"))
        write_image(Path(tmp) / "celegans.ome.zarr", img.data, spacing=img.spacing)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Open by URL")
            dock.url.setCurrentText(f"http://127.0.0.1:{server.server_address[1]}/celegans.ome.zarr")
            dock.open()
            while dock.worker is not None:
                _settle(viewer, qapp, 100)
            viewer.dims.order = (0, 1, 2)
            viewer.dims.set_current_step(0, viewer.layers[0].data.shape[0] // 2)
            dock.url.lineEdit().setCursorPosition(0)  # the URL's start: its scheme and host
            viewer.reset_view()
            _shot(viewer, qapp, "open_url_widget.png")
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
