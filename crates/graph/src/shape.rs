//! Shapes and strided layouts, in ggml order: dimension 0 (`ne0`) is innermost.

use std::fmt;

use crate::error::{Error, Result};

/// Most dimensions a tensor has.
pub const MAX_DIMS: usize = 4;

/// A tensor shape of up to four dimensions, ggml order; unused trailing dimensions are 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape([usize; MAX_DIMS]);

impl Shape {
    /// A shape from up to four dimensions (ne0 first).
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_DIMS {
            return Err(Error::Shape {
                op: "shape",
                reason: format!("{dims:?} has more than {MAX_DIMS} dimensions"),
            });
        }
        let mut out = [1; MAX_DIMS];
        out[..dims.len()].copy_from_slice(dims);
        Ok(Shape(out))
    }

    /// A shape from exactly four dimensions.
    pub const fn from_dims(dims: [usize; MAX_DIMS]) -> Shape {
        Shape(dims)
    }

    /// All four dimensions (trailing ones are 1).
    pub fn dims(&self) -> [usize; MAX_DIMS] {
        self.0
    }

    /// Dimension `i` (`ne_i`).
    pub fn ne(&self, i: usize) -> usize {
        self.0[i]
    }

    /// Number of dimensions up to the last one that is not 1 (at least 1).
    pub fn rank(&self) -> usize {
        (1..=MAX_DIMS)
            .rev()
            .find(|&r| self.0[r - 1] != 1)
            .unwrap_or(1)
    }

    /// Number of elements (saturating; shapes built by the builder never overflow).
    pub fn n_elems(&self) -> usize {
        self.0.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Number of rows: elements / ne0.
    pub fn n_rows(&self) -> usize {
        self.0[1] * self.0[2] * self.0[3]
    }

    /// Strides (in elements) of this shape stored contiguously.
    pub fn contiguous_strides(&self) -> [usize; MAX_DIMS] {
        let d = self.0;
        [1, d[0], d[0] * d[1], d[0] * d[1] * d[2]]
    }

    /// The same shape with dimension `i` replaced.
    pub fn with(&self, i: usize, value: usize) -> Shape {
        let mut d = self.0;
        d[i] = value;
        Shape(d)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0[..self.rank()]).finish()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where a tensor's elements lie in its storage buffer: shape, strides and offset, all in
/// elements of that buffer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Layout {
    /// The logical shape.
    pub shape: Shape,
    /// Element strides per dimension.
    pub strides: [usize; MAX_DIMS],
    /// Element offset of index (0, 0, 0, 0).
    pub offset: usize,
}

impl Layout {
    /// A contiguous layout at offset 0.
    pub fn contiguous(shape: Shape) -> Layout {
        Layout {
            shape,
            strides: shape.contiguous_strides(),
            offset: 0,
        }
    }

    /// Whether the elements are stored densely in ggml order (dimensions of size 1 ignored).
    pub fn is_contiguous(&self) -> bool {
        let want = self.shape.contiguous_strides();
        (0..MAX_DIMS).all(|i| self.shape.ne(i) == 1 || self.strides[i] == want[i])
    }

    /// Whether each row (dimension 0) is dense.
    pub fn rows_contiguous(&self) -> bool {
        self.shape.ne(0) == 1 || self.strides[0] == 1
    }

    /// One past the largest element index the layout reaches (0 for an empty tensor).
    pub fn span(&self) -> usize {
        if self.shape.n_elems() == 0 {
            return 0;
        }
        self.offset
            + (0..MAX_DIMS)
                .map(|i| (self.shape.ne(i) - 1) * self.strides[i])
                .sum::<usize>()
            + 1
    }

    /// Element index in storage of the logical index `idx`.
    #[inline]
    pub fn index(&self, idx: [usize; MAX_DIMS]) -> usize {
        self.offset
            + idx[0] * self.strides[0]
            + idx[1] * self.strides[1]
            + idx[2] * self.strides[2]
            + idx[3] * self.strides[3]
    }

    /// Storage offset of row `r` (rows counted over dimensions 1..4 in order).
    #[inline]
    pub fn row_offset(&self, r: usize) -> usize {
        let d = self.shape.dims();
        let i1 = r % d[1];
        let i2 = (r / d[1]) % d[2];
        let i3 = r / (d[1] * d[2]);
        self.offset + i1 * self.strides[1] + i2 * self.strides[2] + i3 * self.strides[3]
    }
}
