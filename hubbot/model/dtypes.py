"""The floating-point types a merge reads and writes, in one table: the name recipes and
config.json use, the safetensors code, and the other spellings recipes accept (mergekit's).
No torch here: recipes are checked without it; model.format maps the codes to torch dtypes."""

from __future__ import annotations

FLOATS = (  # (name, safetensors code, other spellings)
    ("bfloat16", "BF16", ("bf16",)),
    ("float16", "F16", ("fp16", "half")),
    ("float32", "F32", ("fp32", "float")),
    ("float64", "F64", ()),
)
RECIPE_DTYPES = ("bfloat16", "float16", "float32")  # what a recipe's dtype and out_dtype may be
TERNARY = "ternary"  # out_dtype only: linear weights written as packed BitNet b1.58 ternary values

FLOAT_CODES = tuple(code for _, code, _ in FLOATS)
CODE_NAMES = {code: name for name, code, _ in FLOATS}
DTYPE_CODES = {name: code for name, code, _ in FLOATS if name in RECIPE_DTYPES}
DTYPE_ALIASES = {spelling: name for name, _, more in FLOATS if name in RECIPE_DTYPES for spelling in (name, *more)}
