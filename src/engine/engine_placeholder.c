/* replaced by the engine */
typedef int bn_engine_placeholder;
