// The start of a training step whose per-step scalars live in device memory (minivae.gpu.graph):
// a CUDA graph replays the same kernels with the same arguments, so what changes from one step
// to the next is read from memory, selected by a step counter the graph itself advances.
#ifndef MINIVAE_STEP_CUH
#define MINIVAE_STEP_CUH

// philox.cuh: MV_HD and the integer types
#include "philox.cuh"

// Step *step of a run of `steps` steps: row *step of `table` (`width` float64 scalars a step)
// into `current`, the step's noise offset into *offset, then the counter advances. A counter
// outside [0, steps) (which the trainer never replays) writes nothing.
MV_HD void mv_step_advance_at(const double* table, const mv_u64* offsets, mv_i64 width, mv_i64 steps,
                              mv_i64* step, double* current, mv_u64* offset) {
    const mv_i64 t = *step;
    if (t >= 0 && t < steps) {
        for (mv_i64 k = 0; k < width; ++k) current[k] = table[t * width + k];
        *offset = offsets[t];
    }
    *step = t + 1;
}

#endif  // MINIVAE_STEP_CUH
