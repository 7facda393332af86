/* replaced by the kernels */
typedef int bn_kernels_placeholder;
