// QUANTD_HD marks scalar functions shared verbatim by the CPU and CUDA backends, so that both
// compile the same arithmetic and produce the same bits.
#ifndef QUANTD_HD_H_
#define QUANTD_HD_H_

#if defined(__CUDACC__)
#define QUANTD_HD __host__ __device__ __forceinline__
#else
#define QUANTD_HD inline
#endif

#endif  // QUANTD_HD_H_
