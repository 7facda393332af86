/* Implemented by its owner this session (see the header). */
#include "model/tl_layout.h"
