/* being written */
typedef int bn_placeholder_hf_write;
