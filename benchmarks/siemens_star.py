"""A Siemens star from an independent simulator: `ptytomo import` + `reconstruct --method ptycho` (one table).

The data are made by tests/siemens_star_sim.py (numpy only, not ptytomo's
forward model): a 36-spoke gold-like star on a 2x finer grid, a defocused
zone-plate probe with a central stop, astigmatism and 3 incoherent modes, a
Fermat spiral with 0.5 px rms stage errors the file does not hold, Poisson
counts as uint16 with the zero frequency at the corner, the physics sign
exp(-i phi), and a poor probe guess in the file: a flat disc of the wrong size
(`disc`) or the pupil without its aberration and modes (`pupil`).  The CXI
files go through the command line as a user would run it: `ptytomo import`
(--angles for the one angle; `given`: --dc 0,0 --conjugate yes, what a user who
knows the detector states; `defaults`: nothing), then `ptytomo reconstruct
--method ptycho` with --refine none or --refine probe,positions --probe-modes 3,
all other options at their defaults; INIT `defocus` starts the probe from the
mean pattern propagated by the zone plate's defocus (--probe-init mean-pattern
--probe-defocus Z, what a user who knows the focus-to-sample distance asks for).

    python benchmarks/siemens_star.py          # 64 px detector, 300 frames, 4 runs (~20-25 min on 2 cores)
    python benchmarks/siemens_star.py --detector 32 --frames 100 --spokes 16
    python benchmarks/siemens_star.py --runs "disc/defaults/probe,positions;pupil/defaults/probe,positions"

Measured on the reconstructed transmission's phase (/reconstruction/transmission), after
removing a global phase offset and linear ramp and registering the star's centre (sub-pixel;
ptychography leaves the object free to move with the probe), in whichever sign matches
(column `sign`: + is FORMAT.md's, - means the frames kept the physics sign): the spokes'
modulation along circles (first angular harmonic, against the ideal square wave's
2 phase / pi), the smallest radius from which outwards it stays above half of that
("resolved px"), the correlation with the truth's phase over the scanned region; the
refined probe (/reconstruction/probe): correlation of its modulus sqrt(sum_k |P_k|^2) with
the true one's (best integer shift) and its far field's central-stop ratio (amplitude
inside the stop over that in the annulus: true probe 0, the disc > 1); the window errors
after removing their mean (rms per coordinate) and misfit/noise from the reconstruction's
attributes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import siemens_star_sim as sim  # noqa: E402  (the independent simulator lives beside the tests)


def run(argv: list[str], quiet: bool = False) -> float:
    """One ptytomo command through its command line; wall seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ptytomo.cli", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"ptytomo {' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    if not quiet:
        for line in (result.stdout + result.stderr).splitlines():
            if line.strip() and "it/s" not in line and "s/it" not in line and "%|" not in line:
                print(f"    | {line}", flush=True)
    return seconds


IMPORTS = {
    # what a user runs who states nothing about the file's conventions
    "defaults": [],
    # what a user states who knows the detector writes FFT order (DC at pixel 0,0) and the physics sign
    "given": ["--dc", "0,0", "--conjugate", "yes"],
}
# (file's probe guess, import, --refine[, initial probe]): the default runs
RUNS = "disc/given/none;disc/given/probe,positions;disc/given/probe,positions/defocus;pupil/given/probe,positions"
# initial probes besides the file's: what a user who knows the zone plate's defocus asks for
INITS = {"file": lambda config: [],
         "defocus": lambda config: ["--probe-init", "mean-pattern", f"--probe-defocus={config.defocus_m:.4g}"]}


def make_data(config: sim.StarConfig, workdir: str, guesses) -> tuple[dict, sim.StarScan, float]:
    """One CXI file per probe guess (same frames), the truth beside them (npz), the --angles file; seconds."""
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    scan = sim.simulate(config)
    files = {}
    for guess in guesses:
        scan.file_probe = sim.guess_probe(replace(config, file_probe=guess))
        files[guess] = os.path.join(workdir, f"star_{guess}.cxi")
        sim.write_cxi(files[guess], scan)
    sim.write_truth(os.path.join(workdir, "star_truth.npz"), scan)
    with open(os.path.join(workdir, "angles.txt"), "w") as f:
        f.write("0\n")
    return files, scan, time.perf_counter() - started


def import_file(cxi: str, workdir: str, name: str) -> tuple[str, float]:
    data = os.path.join(workdir, f"{os.path.basename(cxi)[:-4]}_{name}.h5")
    if os.path.exists(data):
        os.remove(data)
    seconds = run(["import", data, cxi, "--angles", os.path.join(workdir, "angles.txt"), "--quiet", *IMPORTS[name]],
                  quiet=True)
    return data, seconds


def imported(data: str) -> dict:
    with h5py.File(data, "r") as f:
        record = dict(f["/import"].attrs) if "/import" in f else {}
        return {"positions": f["/measurement/positions"][0], "probe": f["/probe"][()],
                "volume_shape": tuple(int(n) for n in f["/geometry"].attrs["volume_shape"]), "import": record}


def reconstruct(data: str, output: str, refine: str, modes: int, extra: list[str]) -> float:
    argv = ["reconstruct", data, "-o", output, "--method", "ptycho", "--refine", refine, "--quiet", *extra]
    if refine != "none" and modes:  # --probe-modes 0: reconstruct's default, as many modes as the file's probe
        argv += ["--probe-modes", str(modes)]
    return run(argv)


def read_reconstruction(path: str) -> dict:
    with h5py.File(path, "r") as f:
        g = f["/reconstruction"]
        out = {"transmission": g["transmission"][0], "attrs": dict(g.attrs)}
        out["probe"] = g["probe"][()] if "probe" in g else None
        out["positions"] = g["positions"][0] if "positions" in g else None
    return out


def figure(path: str, panels: list[tuple[str, np.ndarray, str]], region) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 4
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows))
    for ax, (title, image, kind) in zip(axes.flat, panels):
        if kind == "phase":
            im = ax.imshow(np.where(region, image, np.nan), cmap="gray", vmin=-0.2, vmax=1.0)
        elif kind == "cyclic":
            im = ax.imshow(image, cmap="twilight", vmin=-np.pi, vmax=np.pi)
        else:
            im = ax.imshow(image, cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def import_note(guess: str, name: str, seconds: float, info: dict) -> str:
    rec = info["import"]
    return (f"import of the {guess} file, {name} ({' '.join(IMPORTS[name]) or 'no options'}; {seconds:.1f} s): DC "
            f"{int(rec.get('dc_row', -1))},{int(rec.get('dc_col', -1))} "
            f"({'detected' if rec.get('dc_detected') else 'given'}; true 0,0), conjugated "
            f"{'yes' if rec.get('conjugated') else 'no'} (true: yes; phase/attenuation correlation "
            f"{float(rec.get('conjugate_correlation', np.nan)):+.2f}), volume {info['volume_shape']}, pixel "
            f"{float(rec.get('object_pixel_m', np.nan)) * 1e9:.2f} nm, mean frame "
            f"{float(rec.get('mean_frame_photons', np.nan)):.3g}, file probe "
            f"{float(rec.get('probe_photons', np.nan)):.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=int, default=64, help="detector pixels per side (default 64)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--spokes", type=int, default=36)
    parser.add_argument("--photons", type=float, default=2e5, help="mean counts per frame")
    parser.add_argument("--position-error", type=float, default=0.5, help="px rms per coordinate")
    parser.add_argument("--runs", default=RUNS,
                        help="semicolon-separated GUESS/IMPORT/REFINE[/INIT]: the file's probe guess (disc, pupil), the "
                             f"import ({', '.join(IMPORTS)}), the --refine value, the initial probe "
                             f"({', '.join(INITS)}; default file) (default {RUNS!r})")
    parser.add_argument("--check-imports", default="disc,pupil",
                        help="guesses whose files are also imported with the defaults, to report the DC and "
                             "sign decisions (comma list; '' for none)")
    parser.add_argument("--probe-modes", type=int, default=3,
                        help="modes of the refined runs (0: reconstruct's default, the file's)")
    parser.add_argument("--device", default=None, help="passed to reconstruct (default: its own, auto)")
    parser.add_argument("--extra", default="", help="more reconstruct options, one string (default none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="measure the reconstructions already in --workdir (same options) instead of rerunning")
    parser.add_argument("--workdir", default="/tmp/ptytomo_siemens_star")
    parser.add_argument("--results", default=os.path.join(HERE, "results", "siemens_star_cpu.txt"))
    parser.add_argument("--figure", default=os.path.join(HERE, "results", "siemens_star.png"))
    args = parser.parse_args()

    config = sim.StarConfig(detector=args.detector, frames=args.frames, spokes=args.spokes, photons=args.photons,
                            position_error=args.position_error, seed=args.seed)
    runs = [tuple(item.split("/")) + ("file",) * (item.count("/") == 2) for item in args.runs.split(";") if item]
    for run_ in runs:
        if len(run_) != 4 or run_[1] not in IMPORTS or run_[3] not in INITS:
            parser.error(f"--runs: {'/'.join(run_)!r} is not GUESS/IMPORT/REFINE[/INIT] with IMPORT in "
                         f"{', '.join(IMPORTS)} and INIT in {', '.join(INITS)}")
    checks = [g for g in args.check_imports.split(",") if g]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    started = time.perf_counter()
    files, scan, seconds = make_data(config, args.workdir, sorted({r[0] for r in runs} | set(checks)))
    say(f"Siemens star, independent numpy simulator (tests/siemens_star_sim.py): {config.spokes} spokes, phase "
        f"{config.phase} rad, amplitude {config.amplitude}, radius {config.radius:.1f} px; detector {config.detector} "
        f"px (far field of a 2x finer grid cropped), {config.frames} frames on a Fermat spiral (mean step "
        f"{config.step * config.beam_px:.1f} px), stage errors {config.position_error} px rms not in the file; "
        f"zone-plate probe: pupil radius {config.pupil_radius * config.detector:.1f} px, central stop "
        f"{config.central_stop}, defocused ring {config.beam_px:.1f} px, astigmatism {config.astigmatism} rad, "
        f"{config.modes} modes {config.mode_weights}; Poisson, {config.photons:.0e} counts/frame, uint16, DC at "
        f"the corner, physics sign.  File probe guesses: disc = flat disc {0.6 * config.beam_px:.1f} px, pupil = "
        f"the pupil without astigmatism, one mode.  Data made in {seconds:.1f} s.")
    extra = (["--device", args.device] if args.device else []) + args.extra.split()
    notes = []
    for guess in checks:
        data, seconds = import_file(files[guess], args.workdir, "defaults")
        notes.append(import_note(guess, "defaults", seconds, imported(data)))
    header = (f"{'file probe (+init)':18s} {'import':8s} {'--refine':16s} {'sign':>4s} {'seconds':>8s} {'resolved px':>11s} "
              f"{'phase corr':>10s} {'probe corr':>10s} {'stop ratio':>10s} {'pos err px':>10s} {'misfit/noise':>12s}")
    rows, mods, panels, probes = [], {}, [], {}
    scorer = None
    data_files = {}
    for guess, name, refine, init in runs:
        if (guess, name) not in data_files:
            data_files[guess, name] = import_file(files[guess], args.workdir, name)
            data, seconds = data_files[guess, name]
            if name != "defaults" or guess not in checks:
                notes.append(import_note(guess, name, seconds, imported(data)))
        data, _ = data_files[guess, name]
        info = imported(data)
        scorer = sim.Scorer(config, scan, info["positions"], info["volume_shape"], info["probe"])
        if not rows:
            truth = scorer.truth()
            truth_mod, truth_radius = scorer.star(truth, scorer.centre)
            mods["truth"] = truth_mod
            true_corr, true_stop = scorer.probe(scorer.true_probe)
            nominal_error, _ = sim.position_error(scan, info["positions"], None)
            rows.append(f"{'truth on the pixel grid':44s} {'+':>4s} {'-':>8s} {truth_radius:11.1f} {1.0:10.3f} "
                        f"{true_corr:10.3f} {true_stop:10.3f} {0.0:10.3f} {'-':>12s}")
            panels.append(("truth phase (FORMAT sign), rad", truth, "phase"))
        if guess not in probes:
            probes[guess] = info["probe"]
            file_corr, file_stop = scorer.probe(info["probe"])
            rows.append(f"{guess + ' (the file: nominal positions)':44s} {'':>4s} {'-':>8s} {'-':>11s} {'-':>10s} "
                        f"{file_corr:10.3f} {file_stop:10.3f} {nominal_error:10.3f} {'-':>12s}")
        output = os.path.join(args.workdir, f"rec_{guess}_{name}_{refine.replace(',', '_')}_{init}.h5")
        if args.reuse and os.path.exists(output) and os.path.exists(output + ".seconds"):
            with open(output + ".seconds") as f:
                seconds = float(f.read())
        else:
            seconds = reconstruct(data, output, refine, args.probe_modes, extra + INITS[init](config))
            with open(output + ".seconds", "w") as f:
                f.write(f"{seconds}\n")
        r = read_reconstruction(output)
        phase, centre, corr, sign = scorer.phase(r["transmission"])
        mod, radius = scorer.star(phase, centre)
        label = f"{guess}, {name}, {refine}" + (f", {init}" if init != "file" else "")
        mods[label] = mod
        probe = r["probe"] if r["probe"] is not None else info["probe"]
        probe_corr, stop = scorer.probe(probe)
        _, pos_err = sim.position_error(scan, info["positions"], r["positions"])
        misfit = float(r["attrs"].get("misfit_to_noise", np.nan))
        moved = np.hypot(*(centre - scorer.centre))
        rows.append(f"{guess + ('+' + init if init != 'file' else ''):18s} {name:8s} {refine:16s} {'+' if sign > 0 else '-':>4s} {seconds:8.1f} {radius:11.1f} "
                    f"{corr:10.3f} {probe_corr:10.3f} {stop:10.3f} {pos_err:10.3f} {misfit:12.3g}   "
                    f"(star moved {moved:.2f} px)")
        print(rows[-1], flush=True)
        panels.append((f"{label}: phase{' (conjugated back)' if sign < 0 else ''}\ncorr {corr:.3f}, "
                       f"resolved {radius:.0f} px", phase, "phase"))
        if r["probe"] is not None:
            panels.append((f"{label}:\nprobe modulus, all modes (corr {probe_corr:.3f})",
                           sim.probe_modulus(r["probe"]), "amp"))
            panels.append((f"{label}:\nprobe mode 1 phase", np.angle(r["probe"][0]), "cyclic"))
            far = np.sqrt(sum(np.abs(np.fft.fftshift(np.fft.fft2(p, norm="ortho"))) ** 2 for p in r["probe"]))
            panels.append((f"{label}:\nprobe far field (stop ratio {stop:.2f})", far, "amp"))
    panels.append(("true probe modulus, all modes", sim.probe_modulus(scorer.true_probe), "amp"))
    panels.append(("true probe mode 1 phase", np.angle(scorer.true_probe[0]), "cyclic"))
    for guess, probe in probes.items():
        panels.append((f"file's probe guess ({guess}) modulus", sim.probe_modulus(probe), "amp"))
    for note in notes:
        say(note)
    say()
    say(header)
    for row in rows:
        say(row)
    say()
    say("spoke modulation / ideal (2 phase / pi) at radius px:")
    picks = [r for r in (6, 8, 10, 12, 15, 20, 25, 30, 40, 50) if r <= scorer.radii[-1]]
    say(f"{'':40s}" + "".join(f"{r:6d}" for r in picks))
    for label, mod in mods.items():
        values = [mod[np.argmin(np.abs(scorer.radii - r))] / sim.ideal_modulation(config) for r in picks]
        say(f"{label:40s}" + "".join(f"{v:6.2f}" for v in values))
    say(f"(Nyquist of the pixel grid: period 2 px at radius {config.spokes / np.pi:.1f} px; total "
        f"{time.perf_counter() - started:.0f} s)")
    if args.results:
        os.makedirs(os.path.dirname(args.results), exist_ok=True)
        with open(args.results, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.figure:
        figure(args.figure, panels, scorer.region)


if __name__ == "__main__":
    main()
