// A C target needs a source file; the module is its header (include/CBenchPoll.h).
#include "CBenchPoll.h"
