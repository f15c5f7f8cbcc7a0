// Where element codes live in the packed `codes` bytes (FORMATS.md "Packing").
//
// Every row of the 2-D view starts on a byte boundary. Within a row, BITSTREAM puts element i
// at bits [b·i, b·i + b) of a little-endian bit stream (4-bit: element 0 in the low nibble;
// 6-bit: four codes in three bytes). INT32_OFFSET (compressed-tensors pack_to_int32) stores
// q + 8 in eight nibbles per little-endian int32, element 0 in bits 0-3: byte for byte the same
// bit stream with the nibble's top bit flipped and rows padded to whole int32 words.
// HIGH_NIBBLE_FIRST (bitsandbytes, NF4) swaps the two nibbles of every byte of the bit stream.
//
//   std::fill(row, row + layout.code_row_bytes, 0);   // StoreCode ORs sub-byte codes in
//   StoreCode(row, i, /*bits=*/4, Packing::kBitstream, code);
//   uint32_t code = LoadCode(row, i, /*bits=*/4, Packing::kBitstream);
#ifndef QUANTD_PACKING_H_
#define QUANTD_PACKING_H_

#include <cstdint>

#include "quantd/codec.h"
#include "quantd/hd.h"

namespace quantd {

// Bytes one row of `cols` codes of `bits` (<= 8) bits occupies; written so that no
// intermediate overflows for any cols >= 0.
QUANTD_HD int64_t PackedRowBytes(int64_t cols, int bits, Packing packing) {
  const int64_t whole_octets = cols / 8, rest = cols % 8;
  if (packing == Packing::kInt32Offset) return (whole_octets + (rest != 0 ? 1 : 0)) * 4;
  return whole_octets * bits + (rest * bits + 7) / 8;
}

// The stored bits of code `code` (the format's native representation, two's complement for
// signed integers): INT32_OFFSET stores q + 8, i.e. the 4-bit code with its top bit flipped.
QUANTD_HD uint32_t PackingTransform(uint32_t code, int bits, Packing packing) {
  return packing == Packing::kInt32Offset ? code ^ (1u << (bits - 1)) : code;
}

// Where element i's code starts among the bits of its row: b·i, except that HIGH_NIBBLE_FIRST
// puts the even elements of 4-bit codes in the high nibble. Within a 32-bit word of whole
// bytes the same holds for the element's index in the word.
QUANTD_HD int64_t CodeBitOffset(int64_t i, int bits, Packing packing) {
  return (packing == Packing::kHighNibbleFirst ? (i ^ 1) : i) * bits;
}

// Writes `code` as element i of a row. Sub-byte codes are ORed in: zero the row first.
QUANTD_HD void StoreCode(uint8_t* row, int64_t i, int bits, Packing packing, uint32_t code) {
  if (bits == 8) {
    row[i] = static_cast<uint8_t>(code);
    return;
  }
  const uint32_t stored = PackingTransform(code, bits, packing);
  const int64_t bit = CodeBitOffset(i, bits, packing);
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  row[byte] |= static_cast<uint8_t>(stored << shift);
  if (shift + bits > 8) row[byte + 1] |= static_cast<uint8_t>(stored >> (8 - shift));
}

// Reads element i of a row as the format's native code.
QUANTD_HD uint32_t LoadCode(const uint8_t* row, int64_t i, int bits, Packing packing) {
  if (bits == 8) return row[i];
  const int64_t bit = CodeBitOffset(i, bits, packing);
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  uint32_t stored = static_cast<uint32_t>(row[byte]) >> shift;
  if (shift + bits > 8) stored |= static_cast<uint32_t>(row[byte + 1]) << (8 - shift);
  stored &= (1u << bits) - 1u;
  return PackingTransform(stored, bits, packing);
}

}  // namespace quantd

#endif  // QUANTD_PACKING_H_
