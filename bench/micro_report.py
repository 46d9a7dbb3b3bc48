"""The Google Benchmark part of docs/performance.md (used by bench/side_by_side.py).

run() runs build/bench/micro_benchmarks (bench/micro_benchmarks.cpp) once and returns its
figures; sections() turns them into markdown and target rows, and draws the cost-growth plot
with gnuplot. Peak = the best GFLOP/s of a large matrix product and a large 3x3 convolution
measured in the same run, per precision.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "build", "bench", "micro_benchmarks")


def run(threads, quick=False, device="cpu"):
    """Runs every micro-benchmark; returns {name: {"ms", "gflops", "flops", "images_per_second"}}."""
    if not os.access(BINARY, os.X_OK):
        sys.exit("side_by_side: build/bench/micro_benchmarks is missing; run bash scripts/build.sh first")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [BINARY, "--threads", str(threads), "--device", device, f"--benchmark_out={out.name}",
                   "--benchmark_out_format=json"]
        # at least 2 s of repetitions each; --quick: a few, to check the plumbing
        command.append(f"--benchmark_min_time={0.01 if quick else 2}")
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        report = json.load(open(out.name))
    results = {}
    for entry in report["benchmarks"]:
        name = entry["name"].replace("/real_time", "")
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[entry["time_unit"]]
        results[name] = {"ms": entry["real_time"] * scale, "gflops": entry.get("GFLOP/s", 0.0),
                         "flops": entry.get("flops", 0.0), "images_per_second": entry.get("images/s", 0.0)}
    return {"context": {k: report["context"].get(k) for k in ("num_cpus", "mhz_per_cpu", "guidiff_threads",
                                                            "guidiff_device", "library_build_type")},
            "benchmarks": results}


def _peak(benchmarks, precision):
    candidates = {name: b["gflops"] for name, b in benchmarks.items()
                  if name.startswith("peak/") and f"/{precision}/" in name}
    best = max(candidates, key=candidates.get)
    return best, candidates[best]


def _plot(benchmarks, path):
    """images/s against batch size (28x28) and against image size (batch 64), one PNG."""
    by_batch = sorted((int(n.split("batch:")[1].split("/")[0]), b["images_per_second"], b["gflops"])
                      for n, b in benchmarks.items() if n.startswith("unet_forward/fp32/") and n.endswith("size:28"))
    by_size = sorted((int(n.split("size:")[1]), b["images_per_second"], b["gflops"])
                     for n, b in benchmarks.items() if n.startswith("unet_forward/fp32/batch:64/"))
    with tempfile.TemporaryDirectory() as work:
        for name, rows in (("batch", by_batch), ("size", by_size)):
            with open(os.path.join(work, f"{name}.dat"), "w") as data:
                data.writelines(f"{x} {ips} {gflops}\n" for x, ips, gflops in rows)
        temporary = path + ".tmp.png"
        script = f"""set terminal pngcairo size 1100,420 font ',10' noenhanced
set output '{temporary}'
set multiplot layout 1,2 title 'Default UNet forward (fp32): cost growth'
set grid
set key top right
set ytics nomirror
set y2tics
set ylabel 'images/s'
set y2label 'GFLOP/s'
set yrange [0:*]
set y2range [0:*]
set logscale x 2
set xlabel 'batch size (28x28)'
plot '{work}/batch.dat' using 1:2 with linespoints lw 2 title 'images/s', '' using 1:3 axes x1y2 with linespoints dt 2 title 'GFLOP/s'
unset logscale x
set xlabel 'image size (batch 64)'
set xtics (28, 32, 64)
plot '{work}/size.dat' using 1:2 with linespoints lw 2 title 'images/s', '' using 1:3 axes x1y2 with linespoints dt 2 title 'GFLOP/s'
unset multiplot
"""
        with open(os.path.join(work, "plot.gp"), "w") as out:
            out.write(script)
        subprocess.run(["gnuplot", os.path.join(work, "plot.gp")], check=True)
        os.replace(temporary, path)  # atomic
    return by_batch, by_size


def sections(micro, plot_path):
    """Markdown lines for the micro-benchmarks, and target rows (label, figure, met)."""
    b = micro["benchmarks"]
    peak_name, peak = _peak(b, "fp32")
    peak16_name, peak16 = _peak(b, "bf16")
    # Without bf16 hardware the direct bf16 rows run libtorch's fallback kernels, which
    # accumulate in bf16 and are far slower than float32; guidiff's autocast avoids them
    # (float32 arithmetic on bf16-rounded operands), so its bf16 forward is measured against
    # the float32 peak there.
    bf16_emulated = peak16 < peak
    forward16_reference = peak if bf16_emulated else peak16
    lines = ["## One UNet forward against the machine's peak", "",
             "Google Benchmark (`build/bench/micro_benchmarks`, source `bench/micro_benchmarks.cpp`), same run. "
             "FLOPs are counted from the operand shapes of every convolution and matrix product that libtorch "
             "runs (`src/guidiff/core/flop_counter.hpp`; element-wise work such as GroupNorm and SiLU is not "
             "counted). The peak is the best of a 2048³ matrix product and a 3x3 convolution "
             "(batch 32, 128 → 128 channels, 28x28) in the same precision.", "",
             "| work | FLOPs per call | ms per call | GFLOP/s | % of peak |", "|---|---|---|---|---|"]
    rows = [("peak/matmul/fp32/n:2048", "fp32 matrix product 2048³", peak),
            ("peak/conv3x3/fp32/batch:32/channels:128/size:28", "fp32 3x3 convolution", peak),
            ("unet_forward/fp32/batch:64/size:28", "UNet forward, fp32, batch 64", peak),
            ("unet_forward/fp32_channels_last/batch:64/size:28", "UNet forward, fp32 channels_last, batch 64", peak),
            ("peak/matmul/bf16/n:2048", "bf16 matrix product 2048³", peak16),
            ("peak/conv3x3/bf16/batch:32/channels:128/size:28", "bf16 3x3 convolution", peak16),
            ("unet_forward/bf16/batch:64/size:28", "UNet forward, bf16 autocast, batch 64", forward16_reference)]
    for name, label, reference in rows:
        if name in b:
            lines.append(f"| {label} | {b[name]['flops'] / 1e9:.2f} G | {b[name]['ms']:.1f} | "
                         f"{b[name]['gflops']:.0f} | {100 * b[name]['gflops'] / reference:.0f}% |")
    forward = b["unet_forward/fp32/batch:64/size:28"]
    lines += ["", f"Peak fp32: {peak:.0f} GFLOP/s ({peak_name.split('/')[1]}); peak bf16: {peak16:.0f} GFLOP/s "
              f"({peak16_name.split('/')[1]}). The bf16 forward is {forward['ms'] / b['unet_forward/bf16/batch:64/size:28']['ms']:.2f}x "
              "as fast as fp32." + (
                  " The bf16 peak is below the fp32 one: this CPU has no bf16 arithmetic, and the direct bf16 rows "
                  "run libtorch's fallback kernels, which accumulate in bf16. guidiff's autocast does not use them "
                  "(it computes in float32 on bf16-rounded operands), so the bf16 forward's percentage is of the "
                  "fp32 peak." if bf16_emulated else ""), ""]
    targets = [(f"UNet forward >= 75% of the measured fp32 peak (batch 64)", f"{100 * forward['gflops'] / peak:.0f}%",
                forward["gflops"] / peak >= 0.75)]

    unguided = b["step/unguided/fp32/batch:64"]["ms"]
    forward_2n = b["unet_forward/fp32/batch:128/size:28"]["ms"]
    lines += ["## Guided steps", "",
              "The model calls of one DDIM step at batch 64 (t = 500), from the committed models:", "",
              "| step | ms | against |", "|---|---|---|"]
    step_rows = [("step/unguided/fp32/batch:64", "unguided (UNet forward, null class)", unguided, "unguided"),
                 ("unet_forward/fp32/batch:128/size:28", "one plain UNet forward of batch 2N = 128", unguided, "unguided"),
                 ("step/cfg_w3/fp32/batch:64", "CFG w = 3 (conditional and null rows in one batch)", forward_2n,
                  "the forward of batch 2N"),
                 ("step/classifier_s1/fp32/batch:64", "classifier guidance s = 1", unguided, "unguided"),
                 ("step/classifier_gradient/fp32/batch:64", "  of which the classifier gradient", unguided, "unguided"),
                 ("step/classifier_s1/bf16/batch:64", "classifier guidance s = 1, bf16 autocast",
                  b["unet_forward/bf16/batch:64/size:28"]["ms"], "the bf16 unguided forward"),
                 ("step/classifier_gradient/bf16/batch:64", "  of which the classifier gradient (bf16)",
                  b["unet_forward/bf16/batch:64/size:28"]["ms"], "the bf16 unguided forward")]
    for name, label, reference, against in step_rows:
        if name in b:
            lines.append(f"| {label} | {b[name]['ms']:.1f} | {b[name]['ms'] / reference:.2f}x {against} |")
    cfg_ratio = b["step/cfg_w3/fp32/batch:64"]["ms"] / forward_2n
    classifier_ratio = b["step/classifier_s1/fp32/batch:64"]["ms"] / unguided
    targets += [("CFG step <= 1.05x one plain forward of batch 2N", f"{cfg_ratio:.2f}x", cfg_ratio <= 1.05),
                ("classifier-guided step <= 1.5x an unguided step (one step, micro-benchmark)", f"{classifier_ratio:.2f}x",
                 classifier_ratio <= 1.5)]
    gradient_flops = b["step/classifier_gradient/fp32/batch:64"]["flops"]
    lines += ["", f"The classifier gradient is {gradient_flops / 1e9:.1f} GFLOP per call: one classifier forward "
              "and one backward that computes input gradients only (the FLOP counter would count weight "
              "gradients too, and shows none).", ""]

    overheads = sorted((n.split("/")[1], v["ms"] / 50) for n, v in b.items() if n.startswith("sampler_overhead/"))
    if overheads:
        lines += ["## Sampler overhead per step", "",
                  "Each sampler's own work per step beyond the model call: `generate()` of 64 images 1x28x28 "
                  "over 50 steps with a model that returns eps = 0, divided by 50 (including a 1/50 share of "
                  "drawing x_T), against one UNet forward at batch 64:", "",
                  "| sampler | ms per step | of a UNet forward (batch 64) |", "|---|---|---|"]
        for sampler, ms in overheads:
            lines.append(f"| {sampler} | {ms:.3f} | {100 * ms / forward['ms']:.2f}% |")
        worst_sampler, worst = max(overheads, key=lambda item: item[1])
        targets.append((f"every sampler's per-step overhead < 2% of a UNet forward at batch 64 (worst: {worst_sampler})",
                        f"{100 * worst / forward['ms']:.2f}%", worst / forward["ms"] < 0.02))
        lines.append("")

    by_batch, by_size = _plot(b, plot_path)
    lines += ["## Cost growth", "",
              f"![images/s against batch size and image size]({os.path.basename(plot_path)})", "",
              "| UNet forward (fp32) | ms | images/s | GFLOP/s |", "|---|---|---|---|"]
    for batch, ips, gflops in by_batch:
        lines.append(f"| batch {batch}, 28x28 | {b[f'unet_forward/fp32/batch:{batch}/size:28']['ms']:.1f} | "
                     f"{ips:.0f} | {gflops:.0f} |")
    for size, ips, gflops in by_size:
        if size != 28:
            lines.append(f"| batch 64, {size}x{size} (random weights, attention at {size // 4}x{size // 4}) | "
                         f"{b[f'unet_forward/fp32/batch:64/size:{size}']['ms']:.1f} | {ips:.0f} | {gflops:.0f} |")
    lines.append("")
    return lines, targets
