// Emulation stand-in for the CUDA header of the same name: everything lives in cuda_emu.h.
#pragma once
#include "../cuda_emu.h"
