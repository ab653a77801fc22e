#!/usr/bin/env python3
"""Writes the hand-made corpus of malformed GGUF files (byte by byte, no GGUF library).

Each file breaks one rule; `tests/it/bad_files.rs` lists the error each must produce.
The files are committed; this script documents how they were made.
"""
import struct

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(text):
    b = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def tinfo(name, dims, ggml_type, offset):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) \
        + struct.pack("<IQ", ggml_type, offset)


def header(n_tensors, n_kv, version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


ARCH = kv("general.architecture", STR, s("gemma4"))


def pad(b, align=32):
    return b + b"\0" * ((-len(b)) % align)


def file_with_tensors(infos, data_len, kvs=(ARCH,)):
    body = header(len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return pad(body) + b"\x11" * data_len


FILES = {
    "empty.gguf": b"",
    "bad_magic.gguf": b"GGML" + struct.pack("<IQQ", 3, 0, 0),
    "version1.gguf": header(0, 0, version=1),
    "big_endian.gguf": b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
    "truncated_header.gguf": b"GGUF" + struct.pack("<I", 3) + b"\0\0\0",
    "huge_kv_count.gguf": header(0, 2**64 - 1),
    "huge_tensor_count.gguf": header(2**62, 0),
    "huge_string_len.gguf": header(0, 1) + struct.pack("<Q", 2**64 - 1) + b"abc" + b"\0" * 10,
    "non_utf8_key.gguf": header(0, 1) + s(b"gen\xff\xfe") + struct.pack("<I", U8) + b"\1",
    "unknown_value_type.gguf": header(0, 1) + kv("x", 13, b"\0" * 8),
    "bad_bool.gguf": header(0, 1) + kv("x", BOOL, b"\2"),
    "huge_array_len.gguf": header(0, 1) + kv("x", ARR, struct.pack("<IQ", U32, 2**62) + b"\0" * 16),
    "deep_nesting.gguf": header(0, 1) + kv("x", ARR, struct.pack("<IQ", ARR, 1) * 9 + struct.pack("<IQ", U8, 0)),
    "duplicate_key.gguf": header(0, 2) + kv("x", U8, b"\1") + kv("x", U8, b"\2"),
    "bad_alignment.gguf": header(0, 1) + kv("general.alignment", U32, struct.pack("<I", 24)),
    "alignment_wrong_type.gguf": header(0, 1) + kv("general.alignment", U64, struct.pack("<Q", 32)),
    "tensor_too_many_dims.gguf": file_with_tensors([tinfo("w", [1, 1, 1, 1, 1], 0, 0)], 4),
    "unknown_ggml_type.gguf": file_with_tensors([tinfo("w", [32], 4, 0)], 64),
    "tensor_offset_past_end.gguf": file_with_tensors([tinfo("w", [16], 0, 64)], 64),
    "misaligned_offset.gguf": file_with_tensors([tinfo("w", [4], 0, 4)], 64),
    "shape_overflow.gguf": file_with_tensors([tinfo("w", [2**32, 2**32], 0, 0)], 64),
    "partial_block.gguf": file_with_tensors([tinfo("w", [100], 12, 0)], 256),
    "duplicate_tensor.gguf": file_with_tensors([tinfo("w", [4], 0, 0), tinfo("w", [4], 0, 32)], 64),
    "non_utf8_tensor_name.gguf": file_with_tensors([tinfo(b"w\xc3", [4], 0, 0)], 64),
    "long_tensor_name.gguf": file_with_tensors([tinfo("t" * 65, [4], 0, 0)], 64),
    "truncated_tensor_infos.gguf": (header(1, 1) + ARCH + s("w") + struct.pack("<IQ", 2, 16)),
    "offset_overflow.gguf": file_with_tensors([tinfo("w", [8], 0, 2**64 - 32)], 64),
}

for name, data in FILES.items():
    with open(name, "wb") as f:
        f.write(data)
print(f"wrote {len(FILES)} files")
