// Declares cudaStream_t without including CUDA headers, so that the headers of this
// folder (which declare the CPU reference and the CUDA launcher of each operation side
// by side) compile on machines without CUDA. The typedef is the one CUDA's
// driver_types.h spells; repeating an identical typedef is legal C++.
#ifndef FREEKV_KERNELS_CUDA_FWD_H_
#define FREEKV_KERNELS_CUDA_FWD_H_

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

#endif  // FREEKV_KERNELS_CUDA_FWD_H_
