//! Quantized conversions.
