#!/usr/bin/python3
"""guided-diffusion's ImageNet models at full size: guidiff float32, guidiff bf16 and a PyTorch
reference side by side (issue 12, item 6). Random weights: the speed is the same as the
released files'.

    /usr/bin/python3 bench/guided_diffusion_speed.py [--tiny] [--threads T] [--cases gd64,gd256]
        [--programs guidiff,bf16,reference,reference-heap] [--conv auto|winograd|direct] [--work DIR]
        [--out FILE.md]

Cases:
  gd64   the 64x64 model (296M parameters, README flags) and its depth-4 classifier:
         classifier-guided DDIM 25 steps (--timestep_respacing ddim25 --use_ddim True,
         classifier_scale 1.0), batch 4, random classes.
  gd256  the 256x256 class-conditional model: unguided DDIM 5 steps at batch 1, i.e. five
         forward passes (s/step is the forward's time).

For each case the script writes the networks as torch.save state dicts with cuda-tagged
storages, as the released files are (in --work, reused when present), then runs one process
at a time, with the same thread count:
  guidiff      build/guidiff sample --model X.pt --model-flags "..." (float32)
  guidiff bf16 the same with --bf16
               (--conv passes guidiff's --conv; each guidiff row records the convolutions it ran)
  reference    this script's --reference mode: the same networks in plain PyTorch (the
               float32 reference of tests/fixtures/make_guided_diffusion_fixtures.py),
               weights from torch.load(map_location="cpu"), the same x_T and classes,
               run as a PyTorch user runs it (glibc's default heap);
  reference-heap the same reference with guidiff's heap tuning (GLIBC_TUNABLES: no mmap()ed
               chunks, 1 GiB trim threshold; src/guidiff/core/allocator.hpp), so the two
               programs are compared on equal terms too.
It records the sampling time (guidiff's own "sampling: ... s" line; the reference times its
loop the same way, without loading), images/s, s/step, the load time and each process's peak
RSS (ru_maxrss), checks that the reference's samples equal guidiff's float32 ones (max abs
difference under TOLERANCE) and prints a markdown table for docs/performance.md, one line
per case against issue 12's targets (met or MISSED; bf16's only where `guidiff info` reports
native bf16) (--out writes both to a file too) and the figures as JSON (also saved as
results.json in --work).

--tiny shrinks the networks (64 channels, one block per level, classifier width 64 and depth
1) and the steps (3), to check the script itself in a minute.
"""
import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDIFF = os.path.join(ROOT, "build", "guidiff")
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
import make_guided_diffusion_fixtures as ref  # noqa: E402  (the float64 reference; run here in float32)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# guidiff's start-up heap tuning as glibc tunables, one definition for every bench.
from side_by_side import HEAP_TUNED  # noqa: E402

TOLERANCE = 1e-3  # float32 rounding over 25 guided steps stays far below (the tests bound 2e-3)

FLAGS = {
    "gd64": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
            "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
            "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    "gd256": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
             "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
             "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
}
CLASSIFIER_FLAGS = {"gd64": "--classifier_depth 4"}
TINY = " --num_channels 64 --num_res_blocks 1"
TINY_CLASSIFIER = " --classifier_width 64 --classifier_depth 1"

CASES = {
    # name: (respacing, batch, classifier scale, description)
    "gd64": ("ddim25", 4, 1.0, "ImageNet 64x64 + depth-4 classifier, guided DDIM 25 steps, batch 4"),
    "gd256": ("ddim5", 1, 0.0, "ImageNet 256x256, DDIM 5 steps (5 forwards), batch 1"),
}


def parse_flags(text):
    words = text.split()
    return {words[i][2:]: words[i + 1] for i in range(0, len(words), 2)}


def truth(text):
    return text.lower() in ("yes", "true", "t", "y", "1")


def channel_mult(size):
    return {512: [0.5, 1, 1, 2, 2, 4, 4], 256: [1, 1, 2, 2, 4, 4], 128: [1, 1, 2, 3, 4], 64: [1, 2, 3, 4]}[size]


def unet_config(flags):
    """guided-diffusion's create_model for these flags, as the reference's config."""
    size = int(flags["image_size"])
    return {"kind": "unet", "image_size": size, "in_channels": 3, "model_channels": int(flags["num_channels"]),
            "channel_mult": channel_mult(size), "num_res_blocks": int(flags["num_res_blocks"]),
            "attention_resolutions": [int(r) for r in flags["attention_resolutions"].split(",")],
            "num_heads": int(flags.get("num_heads", 4)), "num_head_channels": int(flags.get("num_head_channels", -1)),
            "use_new_attention_order": truth(flags.get("use_new_attention_order", "False")),
            "use_scale_shift_norm": truth(flags.get("use_scale_shift_norm", "True")),
            "resblock_updown": truth(flags.get("resblock_updown", "False")),
            "learn_sigma": truth(flags.get("learn_sigma", "False")),
            "num_classes": 1000 if truth(flags.get("class_cond", "False")) else 0, "null_class": False,
            "norm_groups": 32}


def classifier_config(flags):
    """create_classifier with classifier_defaults() under these flags."""
    size = int(flags["image_size"])
    return {"kind": "encoder_unet", "image_size": size, "in_channels": 3,
            "model_channels": int(flags.get("classifier_width", 128)), "channel_mult": channel_mult(size),
            "num_res_blocks": int(flags.get("classifier_depth", 2)),
            "attention_resolutions": [int(r) for r in flags.get("classifier_attention_resolutions", "32,16,8").split(",")],
            "num_head_channels": 64, "use_scale_shift_norm": True, "resblock_updown": True, "num_classes": 1000,
            "pool": "attention", "norm_groups": 32}


def overridden(text, overrides):
    """`text` with the flags of `overrides` replacing its own."""
    flags = parse_flags(text)
    flags.update(parse_flags(overrides))
    return " ".join("--%s %s" % item for item in flags.items())


def networks(case, tiny):
    flags = overridden(FLAGS[case], TINY if tiny else "")
    classifier_flags = overridden(CLASSIFIER_FLAGS.get(case, ""), TINY_CLASSIFIER if tiny else "")
    all_flags = parse_flags(flags)
    all_flags.update(parse_flags(classifier_flags))
    return flags, classifier_flags, unet_config(all_flags), classifier_config(all_flags) if case in CLASSIFIER_FLAGS else None


def write_checkpoint(config, path):
    """Random float32 weights for `config`, saved as the released files are (cuda:0 storages)."""
    if os.path.exists(path):
        return
    ref.DTYPE = torch.float32
    build = ref.build_classifier if config["kind"] == "encoder_unet" else ref.build_unet
    values, _ = build(config, torch.Generator().manual_seed(1))
    state = collections.OrderedDict((key, value.to(torch.float32)) for key, value in values.items())
    # torch.save names each storage's device with torch.serialization.location_tag: tagging
    # them "cuda:0" there lets torch's own zip writer write the file (zip64 beyond 2 GiB) as a
    # GPU run would, where rewriting the archive afterwards (the small fixtures' way) gives a
    # zip that torch cannot read once it passes 2 GiB.
    location_tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, path + ".tmp")
    finally:
        torch.serialization.location_tag = location_tag
    os.replace(path + ".tmp", path)


def reference_run(args):
    """The PyTorch side: load with torch.load, sample with the reference's DDIM, time it."""
    torch.set_num_threads(args.threads)
    ref.DTYPE = torch.float32
    spec = json.loads(args.reference)
    started = time.perf_counter()
    unet = spec["unet"]
    P = {k: v.float() for k, v in torch.load(spec["model"], map_location="cpu").items()}
    _, layout = ref.build_unet(unet, None)  # the layout only, no second set of weights
    model = lambda x, t, y: ref.unet_forward(P, layout, unet, x, t, y if unet["num_classes"] else None)  # noqa: E731
    classifier = None
    if spec.get("classifier"):
        c = spec["classifier_config"]
        Q = {k: v.float() for k, v in torch.load(spec["classifier"], map_location="cpu").items()}
        _, clayout = ref.build_classifier(c, None)
        classifier = lambda x, t: ref.classifier_forward(Q, clayout, c, x, t)  # noqa: E731
    load_seconds = time.perf_counter() - started
    alphas = ref.cosine_alphas_cumprod(1000) if spec["schedule"] == "cosine" else ref.linear_alphas_cumprod(1000)
    schedule = ref.Schedule(alphas, ref.respace_ddim(1000, int(spec["respacing"][4:])))
    shape = (3, unet["image_size"], unet["image_size"])
    x_T = ref.sample_noise(spec["seed"], list(range(spec["batch"])), -1, shape)
    labels = torch.tensor(spec["labels"])
    started = time.perf_counter()
    with torch.no_grad():
        path = ref.ddim_sample(model, classifier, schedule, x_T, labels, spec["scale"])
    seconds = time.perf_counter() - started
    np.save(spec["out"], path[-1].numpy().astype(np.float32))
    print(json.dumps({"seconds": seconds, "load_seconds": load_seconds,
                      "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def run_measured(command, env, work):
    """Runs `command` alone; returns its stdout, stderr, wall time and peak RSS in MiB (the
    child's own ru_maxrss, from wait4)."""
    out_path, err_path = os.path.join(work, "stdout.txt"), os.path.join(work, "stderr.txt")
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = open(out_path).read(), open(err_path).read()
    if process.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(command[:3]), stderr[-3000:]))
    return stdout, stderr, wall, usage.ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cases", default="gd64,gd256")
    parser.add_argument("--programs", default="guidiff,bf16,reference,reference-heap",
                        help="which to run (bf16 is slow on CPUs without native bfloat16)")
    parser.add_argument("--conv", default="", help="guidiff's --conv (auto, winograd or direct; default: guidiff's own)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "guidiff-gd-bench"))
    parser.add_argument("--out", default="")
    parser.add_argument("--reference", help=argparse.SUPPRESS)  # internal: one reference run
    args = parser.parse_args()
    if args.reference:
        return reference_run(args)

    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for case in args.cases.split(","):
        respacing, batch, scale, description = CASES[case]
        if args.tiny:
            respacing = "ddim3"
        flags, classifier_flags, unet, classifier = networks(case, args.tiny)
        tag = case + ("_tiny" if args.tiny else "")
        model_path = os.path.join(args.work, tag + "_model.pt")
        write_checkpoint(unet, model_path)
        classifier_path = os.path.join(args.work, tag + "_classifier.pt") if classifier else None
        if classifier:
            write_checkpoint(classifier, classifier_path)
        out = os.path.join(args.work, tag)
        command = [GUIDIFF] + (["--conv", args.conv] if args.conv else []) + ["sample", "--threads", str(args.threads), "--model", model_path, "--model-flags", flags,
                   "--timestep_respacing", respacing, "--use_ddim", "True", "--num_samples", str(batch),
                   "--batch_size", str(batch), "--class", "random", "--seed", "0", "--out", out + ".npy",
                   "--labels-out", out + "_labels.npy"]
        if classifier:
            command += ["--classifier", classifier_path, "--classifier-flags", classifier_flags,
                        "--classifier_scale", str(scale)]
        programs = args.programs.split(",")
        results = {}
        guidiff_samples = None
        for name, extra in (("guidiff", []), ("bf16", ["--bf16"])):
            if name not in programs:
                continue
            _, err, wall, rss = run_measured(command + extra, env, args.work)
            # guidiff's own line: "sampling: N samples in S s (R samples/s)"
            seconds = float(err.split("sampling: ")[1].split(" samples in ")[1].split(" s")[0])
            results["guidiff" if name == "guidiff" else "guidiff bf16"] = {
                "seconds": seconds, "wall_seconds": wall, "max_rss_mib": rss,
                "conv": json.load(open(out + ".model_card.json"))["sampling"]["conv"]}
            print(case, name, json.dumps(results["guidiff" if name == "guidiff" else "guidiff bf16"]), flush=True)
            if name == "guidiff":
                guidiff_samples = np.load(out + ".npy")
        steps = int(respacing[4:])
        if "reference" not in programs and "reference-heap" not in programs:
            for name in results:
                results[name]["images_per_second"] = batch / results[name]["seconds"]
                results[name]["seconds_per_step"] = results[name]["seconds"] / steps
            rows.append({"case": case, "description": description, "tiny": args.tiny, "threads": args.threads,
                         "parameters": json.load(open(out + ".model_card.json"))["model"]["parameters"],
                         "max_abs_difference": None, "agrees": None, "results": results})
            continue
        labels = np.load(out + "_labels.npy").tolist()
        spec = {"model": model_path, "unet": unet, "classifier": classifier_path, "classifier_config": classifier,
                "schedule": "cosine" if "cosine" in flags else "linear", "respacing": respacing, "batch": batch,
                "labels": labels, "scale": scale, "seed": 0, "out": out + "_reference.npy"}
        for name, extra_env in (("reference", {}), ("reference-heap", HEAP_TUNED)):
            if name not in programs:
                continue
            stdout, _, wall, rss = run_measured(
                [sys.executable, __file__, "--threads", str(args.threads), "--reference", json.dumps(spec)],
                dict(env, **extra_env), args.work)
            results["reference, heap tuned" if extra_env else "reference"] = dict(
                json.loads(stdout.strip().splitlines()[-1]), wall_seconds=wall, max_rss_mib=rss)
            print(case, name, json.dumps(results["reference, heap tuned" if extra_env else "reference"]), flush=True)
        difference = None if guidiff_samples is None else float(np.abs(np.load(out + "_reference.npy") - guidiff_samples).max())
        for name in results:
            results[name]["images_per_second"] = batch / results[name]["seconds"]
            results[name]["seconds_per_step"] = results[name]["seconds"] / steps
        rows.append({"case": case, "description": description, "tiny": args.tiny, "threads": args.threads,
                     "parameters": json.load(open(out + ".model_card.json"))["model"]["parameters"],
                     "max_abs_difference": difference,
                     "agrees": None if difference is None else difference < TOLERANCE, "results": results})
        # Each case's figures are kept as soon as it ends, so a later case's failure loses none.
        with open(os.path.join(args.work, "results.json"), "w") as f:
            json.dump(rows, f, indent=1)
    bf16 = guidiff_bf16_support(env)
    print(render(rows))
    print(targets(rows, bf16))
    print(json.dumps(rows, indent=1))
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(render(rows) + "\n\n" + targets(rows, bf16) + "\n")


def guidiff_bf16_support(env):
    """The first word of `guidiff info`'s bf16 line ("native" or "emulated"), under the same
    environment as the runs. That word is the CPU's; where ONEDNN_MAX_CPU_ISA holds oneDNN below
    its bf16 kernels (the line says they fail at this oneDNN level), bf16 is not native here."""
    info = subprocess.run([GUIDIFF, "info"], capture_output=True, text=True, env=env).stdout
    for line in info.splitlines():
        if line.startswith("bf16"):
            if "fail at this oneDNN level" in line:
                return "held below native by ONEDNN_MAX_CPU_ISA"
            return line.split()[1].rstrip(";")
    return "unknown"


def targets(rows, bf16):
    """Issue 12's three targets, per case, from whichever programs ran: guidiff float32 at least
    1.5x PyTorch as a user runs it, no slower than PyTorch with the same heap tuning, and bf16 at
    least 1.3x float32 where the CPU has native bf16."""
    lines = []
    for row in rows:
        r = row["results"]
        seconds = {name: r[name]["seconds"] for name in r}
        checks = []
        for name, target, what in (("reference", 1.5, "PyTorch as a user runs it"),
                                   ("reference, heap tuned", 1.0, "PyTorch with the same heap tuning")):
            if "guidiff" in seconds and name in seconds:
                ratio = seconds[name] / seconds["guidiff"]
                checks.append("guidiff float32 %.2fx %s (target %.1fx: %s)" % (
                    ratio, what, target, "met" if ratio >= target else "MISSED"))
        if "guidiff" in seconds and "guidiff bf16" in seconds:
            ratio = seconds["guidiff"] / seconds["guidiff bf16"]
            verdict = ("met" if ratio >= 1.3 else "MISSED") if bf16 == "native" else "not applicable, bf16 is %s here" % bf16
            checks.append("bf16 %.2fx float32 (target 1.3x with native bf16: %s)" % (ratio, verdict))
        if checks:
            lines.append("%s: %s" % (row["case"], "; ".join(checks)))
    return "\n".join(lines)


def render(rows):
    lines = ["| case | program | images/s | s/step | peak RSS (MiB) |", "|---|---|---|---|---|"]
    for row in rows:
        for name, r in row["results"].items():
            rss = r.get("max_rss_mib")
            label = name + (" (--conv %s)" % r["conv"] if r.get("conv") else "")
            lines.append("| %s (%.0fM parameters%s) | %s | %.3f | %.3f | %s |" % (
                row["case"], row["parameters"] / 1e6, ", tiny" if row["tiny"] else "", label, r["images_per_second"],
                r["seconds_per_step"], "%.0f" % rss if rss else "-"))
        lines.append("")
        if row["max_abs_difference"] is not None:
            lines.append("%s: reference vs guidiff float32 max |difference| %.2e (%s)" % (
                row["case"], row["max_abs_difference"], "agree" if row["agrees"] else "DISAGREE"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
