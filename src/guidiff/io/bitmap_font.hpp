// A built-in 5x7 pixel font (guidiff's own glyphs: ASCII letters, digits and a little
// punctuation), for labels drawn into image grids without a font library.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace guidiff {

// Glyph cell in font pixels: 5 wide plus 1 of spacing, 7 tall.
constexpr int64_t kGlyphWidth = 5, kGlyphAdvance = 6, kGlyphHeight = 7;

// The text as a bool mask [7 scale, (6 len - 1) scale] (no trailing spacing; [7 scale, 0]
// for ""), each font pixel a scale x scale block. Characters without a glyph draw as '?'.
// Throws InputError unless scale >= 1.
torch::Tensor render_text(const std::string& text, int64_t scale = 1);

// Whether `c` has its own glyph (not the '?' fallback).
bool has_glyph(char c);

}  // namespace guidiff
