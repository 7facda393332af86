/* being written */
typedef int bn_placeholder_source_hf;
