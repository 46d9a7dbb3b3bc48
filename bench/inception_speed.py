#!/usr/bin/python3
"""FID Inception-v3 feature extraction, images/s: guidiff (fp32 and bf16) against PyTorch on the
same network, threads and inputs (issue 14).

    /usr/bin/python3 bench/inception_speed.py [--images 10000] [--user-images N] [--batch 100]
        [--threads T] [--cases 28,64] [--weights pt_inception-2015-12-05-6726825d.pth] [--json out.json]

Needs build/bench/inception_speed (cmake -DGUIDIFF_BUILD_BENCH=ON; cmake --build build --target
inception_speed). Cases: "28" = 28x28 grey images (Fashion-MNIST-sized, replicated to RGB),
"64" = 64x64 RGB (ImageNet 64x64-sized); both resized to 299x299 as pytorch-fid does. PyTorch
runs the network of tests/fixtures/make_inception_fixture.py (torchvision's Inception3 with the
FID blocks), with the same preprocessing, under torch.no_grad, with the same thread count; the
two programs run one after the other, never together. Without --weights both networks keep
their default initialisation (speed does not depend on the values; the pool3 checksums then
differ). bf16 rows run guidiff under bf16 autocast (fast only on CPUs with avx512_bf16/AMX).
PyTorch runs twice in a child process: as a user runs it (glibc's default heap) and with the heap
tuning guidiff applies at start-up (through GLIBC_TUNABLES), so the comparison is on equal terms.
Prints a table of images/s and the ratio guidiff / PyTorch as a user runs it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As in bench/side_by_side.py: glibc's defaults (how a PyTorch user runs) and the tuning guidiff
# applies at start-up (src/guidiff/core/allocator.hpp), given to the reference by environment.
GLIBC_DEFAULTS = {"GLIBC_TUNABLES": "glibc.malloc.check=0"}
HEAP_TUNED = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"}
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))


def pytorch_images_per_second(side, channels, images, batch, threads, weights):
    import torch
    import torch.nn.functional as F
    from make_inception_fixture import fid_inception

    torch.set_num_threads(threads)
    net = fid_inception()
    if weights:
        state = torch.load(weights, map_location="cpu")
        net.load_state_dict(state)
    net.eval()
    pixels = (torch.arange(batch * channels * side * side, dtype=torch.int64) * 7919 % 256).reshape(
        batch, channels, side, side)

    def features(count):
        # pytorch-fid: [0, 1], grey to RGB, bilinear resize to 299, then 2x - 1.
        x = pixels[:count].float() / 255.0
        if channels == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        captured = {}
        hook = net.avgpool.register_forward_hook(lambda m, i, o: captured.__setitem__("pool3", o))
        net(x)
        hook.remove()
        return captured["pool3"].flatten(1)

    with torch.no_grad():
        features(min(batch, 2))  # warm-up
        checksum = 0.0
        start = time.perf_counter()
        done = 0
        while done < images:
            count = min(batch, images - done)
            checksum += float(features(count).double().sum())
            done += count
        seconds = time.perf_counter() - start
    import resource
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"images_per_second": images / seconds, "seconds": seconds, "pool3_sum": checksum, "peak_mib": peak_mib}


def pytorch_in_child(side, channels, images, batch, threads, weights, heap):
    """pytorch_images_per_second in a fresh interpreter whose glibc heap is set by `heap`."""
    command = [sys.executable, os.path.abspath(__file__), "--pytorch-child", f"{side},{channels}", "--images",
               str(images), "--batch", str(batch), "--threads", str(threads), "--weights", weights]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, **heap})
    return json.loads(result.stdout.strip().splitlines()[-1])


def guidiff_images_per_second(binary, side, channels, images, batch, threads, weights, bf16):
    command = [binary, "--side", str(side), "--channels", str(channels), "--images", str(images), "--batch",
               str(batch), "--threads", str(threads)]
    if bf16:
        command.append("--bf16")
    if weights:
        command += ["--weights", weights]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--user-images", type=int, default=0,
                        help="images for the row of PyTorch as a user runs it (default: --images); that row is "
                             "4x slower than the others, and its rate per pass does not change with the count")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cases", default="28,64")
    parser.add_argument("--weights", default="")
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "bench", "inception_speed"))
    parser.add_argument("--no-bf16", action="store_true", help="skip guidiff's bf16 rows")
    parser.add_argument("--json", default="")
    parser.add_argument("--pytorch-child", default="", help=argparse.SUPPRESS)  # "side,channels": one PyTorch row
    args = parser.parse_args()
    if args.pytorch_child:
        side, channels = (int(v) for v in args.pytorch_child.split(","))
        print(json.dumps(pytorch_images_per_second(side, channels, args.images, args.batch, args.threads,
                                                   args.weights)))
        return
    if not os.path.exists(args.binary):
        sys.exit(f"inception_speed: {args.binary} is missing; build it with -DGUIDIFF_BUILD_BENCH=ON "
                 "(cmake --build build --target inception_speed)")

    shapes = {"28": (28, 1), "64": (64, 3)}
    rows = []

    def keep(row):  # printed as soon as measured, so an interrupted run loses no finished row
        rows.append(row)
        print(json.dumps(row), flush=True)
    for case in args.cases.split(","):
        side, channels = shapes[case]
        user_images = args.user_images or args.images
        reference = pytorch_in_child(side, channels, user_images, args.batch, args.threads, args.weights,
                                     GLIBC_DEFAULTS)
        keep({"case": f"{side}x{side}x{channels}", "program": "PyTorch fp32", "images": user_images,
                     **reference, "ratio": 1.0})
        tuned = pytorch_in_child(side, channels, args.images, args.batch, args.threads, args.weights, HEAP_TUNED)
        keep({"case": f"{side}x{side}x{channels}", "program": "PyTorch, heap", "images": args.images, **tuned,
                     "ratio": tuned["images_per_second"] / reference["images_per_second"]})
        for bf16 in ([False] if args.no_bf16 else [False, True]):
            ours = guidiff_images_per_second(args.binary, side, channels, args.images, args.batch, args.threads,
                                             args.weights, bf16)
            keep({"case": f"{side}x{side}x{channels}", "program": "guidiff " + ("bf16" if bf16 else "fp32"),
                         "images": args.images, **ours, "ratio": ours["images_per_second"] / reference["images_per_second"],
                         "ratio_heap_tuned": ours["images_per_second"] / tuned["images_per_second"]})
    print(f"batch {args.batch}, {args.threads} threads, resized to 299x299")
    print(f"{'case':<12} {'program':<14} {'images':>7} {'images/s':>10} {'vs PyTorch':>11} {'vs PyTorch, heap':>17} "
          f"{'peak MiB':>9} {'pool3 sum':>14}")
    for row in rows:
        heap = f"{row['ratio_heap_tuned']:.2f}x" if "ratio_heap_tuned" in row else "-"
        print(f"{row['case']:<12} {row['program']:<14} {row['images']:>7} {row['images_per_second']:>10.2f} "
              f"{row['ratio']:>10.2f}x {heap:>17} {row['peak_mib']:>9.0f} {row['pool3_sum']:>14.6g}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"images": args.images, "batch": args.batch, "threads": args.threads, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
