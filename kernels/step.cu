// The first launch of a training step in graph mode (see step.cuh): one thread selects the
// step's row of per-step scalars and noise offset, and advances the step counter.
// Launch: block (1, 1, 1), grid (1).
#include "step.cuh"

extern "C" __global__ void mv_step_advance(const double* table, const mv_u64* offsets, mv_i64 width,
                                           mv_i64 steps, mv_i64* step, double* current, mv_u64* offset) {
    mv_step_advance_at(table, offsets, width, steps, step, current, offset);
}
