/*
 * A stand-in for Windows' bcryptprimitives.dll, for Wine 8 prefixes that lack it.
 *
 * Rust's std (1.78 and later) gets its random bytes (HashMap seeds) from
 * bcryptprimitives!ProcessPrng, loaded when the program starts: without the DLL every
 * Rust executable dies before main under Wine 8. This DLL exports ProcessPrng and forwards
 * it to advapi32!SystemFunction036 (RtlGenRandom), which Wine has.
 *
 * Built by scripts/wine/setup.sh into the prefix's system32; never shipped.
 */
#include <windows.h>

typedef BOOLEAN(WINAPI *rtl_gen_random_fn)(PVOID, ULONG);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    static rtl_gen_random_fn rtl_gen_random;
    if (!rtl_gen_random) {
        HMODULE advapi = LoadLibraryA("advapi32.dll");
        if (!advapi)
            return FALSE;
        rtl_gen_random = (rtl_gen_random_fn)GetProcAddress(advapi, "SystemFunction036");
        if (!rtl_gen_random)
            return FALSE;
    }
    /* RtlGenRandom takes a ULONG length: feed it in chunks. */
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!rtl_gen_random(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
