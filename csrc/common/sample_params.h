// SampleParams is part of the public API: see gptoss/sample_params.h.
#pragma once
#include "gptoss/sample_params.h"
