/* Public API of libaarp.so: the aarp_* functions Python reaches through cffi (ABI mode).
 * Everything not declared AARP_API is hidden (-fvisibility=hidden). */
#ifndef AARP_H
#define AARP_H

#define AARP_API __attribute__((visibility("default")))

/* Library version as "MAJOR.MINOR.PATCH". */
AARP_API const char *aarp_version(void);

#endif
