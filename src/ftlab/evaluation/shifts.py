"""The named distribution shifts, under their old path: they moved to :mod:`ftlab.data.shifts`,
where the data (``data.shift``) can use them without importing the evaluation layer above it."""

from ftlab.data.shifts import (  # noqa: F401
    DEFAULT_SEVERITY,
    IMAGE_SHIFTS,
    SEVERITIES,
    TEXT_SHIFTS,
    ImageShift,
    ShiftedImages,
    TextShift,
    blur,
    contrast,
    gaussian_noise,
    rotation,
    sample_seed,
    shift_texts,
    truncation,
    typos,
    word_dropout,
)
