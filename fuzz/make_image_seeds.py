#!/usr/bin/python3
"""Image seeds for the image_folder fuzz target in formats guidiff does not write itself:
palette, 16-bit, alpha and Adam7-interlaced PNGs, baseline and progressive JPEGs.

Each seed is one options byte (see fuzz_image_folder in targets/data_targets.cpp) followed by
the image file. Run with Debian's python3 (PIL): /usr/bin/python3 fuzz/make_image_seeds.py
"""
import io
import os
import struct
import zlib

from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "image_folder")


def save(name, options, data):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([options]) + data)


def pil_bytes(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(mode, width, height):
    image = Image.new(mode, (width, height))
    bands = len(image.getbands())
    peak = 65535 if mode == "I;16" else 255
    for y in range(height):
        for x in range(width):
            value = (x * 53 + y * 97) % (peak + 1)
            image.putpixel((x, y), value if bands == 1 else tuple((value + 40 * b) % 256 for b in range(bands)))
    return image


def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def interlaced_png(width, height):
    """An 8-bit RGB PNG in Adam7 order (PIL does not write interlaced PNGs)."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        xs, ys = range(x0, width, dx), range(y0, height, dy)
        if not xs or not ys:
            continue
        for y in ys:
            raw += b"\x00" + b"".join(bytes(((x * 31 + y * 7) % 256, (x * 5) % 256, (y * 11) % 256)) for x in xs)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main():
    save("palette_6x4.png", 0x00, pil_bytes(gradient("RGB", 6, 4).convert("P", palette=Image.ADAPTIVE, colors=5), "PNG"))
    save("grey16_4x4.png", 0x01, pil_bytes(gradient("I;16", 4, 4), "PNG"))
    save("rgba_4x4.png", 0x00, pil_bytes(gradient("RGBA", 4, 4), "PNG"))
    save("grey_alpha_4x4.png", 0x03, pil_bytes(gradient("LA", 4, 4), "PNG"))
    save("interlaced_rgb_9x5.png", 0x02, interlaced_png(9, 5))
    save("baseline_rgb_8x8.jpg", 0x10 | 0x08, pil_bytes(gradient("RGB", 8, 8), "JPEG", quality=90))
    save("progressive_grey_8x8.jpg", 0x10 | 0x01 | 0x08, pil_bytes(gradient("L", 8, 8), "JPEG", progressive=True))
    save("subsampled_rgb_4x4.jpg", 0x10, pil_bytes(gradient("RGB", 4, 4), "JPEG", subsampling=2))


if __name__ == "__main__":
    main()
