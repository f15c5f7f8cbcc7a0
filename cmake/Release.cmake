# The release artifact for GPU nodes: `cmake --install <build> --prefix DIR` puts the binaries in
# DIR/bin with an $ORIGIN/../lib rpath; scripts/package.sh then copies the non-system shared
# libraries they need into DIR/lib. The test and benchmark binaries install as the `tests`
# component, so a GPU node can run the GPU tests and benchmarks from the same tree.
foreach(target quantd_gpu_test quantd_gpu_service_test quantd_service_test quantd_unit_test
               quantd_cuda_bench quantd_copy_bench quantd_backend_latency_bench
               quantd_cpu_bench)
  if(TARGET ${target})
    install(TARGETS ${target} RUNTIME DESTINATION bin COMPONENT tests)
  endif()
endforeach()
