extension SIMD8 where Scalar == Float {
    /// `pointwiseMin(self, other)` on non-NaN lanes, ±0 ties included (lane by lane
    /// other < self ? other : self, as `Swift.min`; a NaN in `other` passes through, where
    /// `pointwiseMin` ignores it), as one compare and blend the optimiser keeps inline: the standard library's
    /// generic `pointwiseMin`/`pointwiseMax` stay out-of-line calls in the encoders' loops
    /// (measured: 32% of a portable `kvcrush bench` run, 10% of the AVX2 write cases).
    @inlinable @inline(__always)
    package func lanewiseMin(_ other: Self) -> Self { replacing(with: other, where: other .< self) }

    /// `pointwiseMax(self, other)` on non-NaN lanes (other >= self ? other : self, as `Swift.max`;
    /// a NaN in `self` gives `other`).
    @inlinable @inline(__always)
    package func lanewiseMax(_ other: Self) -> Self { replacing(with: other, where: other .>= self) }
}
