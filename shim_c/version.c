#include "aarp.h"

#define AARP_VERSION_STRING "0.1.0"

const char *aarp_version(void)
{
    return AARP_VERSION_STRING;
}
