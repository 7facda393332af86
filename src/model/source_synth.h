#ifndef BN_MODEL_SOURCE_SYNTH_H
#define BN_MODEL_SOURCE_SYNTH_H

#include "model/source.h"
#include "model/synth.h"

/* Opens a synthetic model as a source; v is copied (the caller keeps its own). */
int bn_source_open_synth(const bn_synth *sy, const bn_vocab *v, bn_source **out, bn_error *err);

#endif
