/*
 * version.h: the version string, from configure's AC_INIT (passed as -DPACKAGE_VERSION).
 */
#ifndef STPROXY_VERSION_H
#define STPROXY_VERSION_H

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define STPROXY_VERSION PACKAGE_VERSION

#endif
