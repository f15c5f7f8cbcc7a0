# Release artifact (relocatable bin/ + lib/ tree): filled in by the CUDA issue.
